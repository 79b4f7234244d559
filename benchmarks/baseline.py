"""`run.py --baseline REF`: a given commit of this repository as one more
server of the same run, so that a change is measured next to its parent.

The commit is checked out with `git worktree add --detach` into a temporary
directory outside the repository and installed (not editable) into its own
virtual environment, benchmarks/.venvs/baseline-<commit>, which is kept and
reused by later runs of the same commit. The checkout is removed when the
run ends (`git worktree remove`, then `git worktree prune`).

Reads the repository with git and adds/removes only its own worktree; it
never touches the checkout the harness runs from.
"""

import os
import shutil
import subprocess
import tempfile


class BaselineError(RuntimeError):
    """The reference cannot be resolved, checked out or installed."""


def _git(repo, *args):
    done = subprocess.run(['git', *args], cwd=repo, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise BaselineError(f'git {" ".join(args)}: '
                            f'{(done.stderr or done.stdout).strip()}')
    return done.stdout.strip()


class Baseline:
    """A commit checked out in a temporary worktree, with its interpreter."""

    def __init__(self, repo, ref):
        self.repo = repo
        self.ref = ref
        try:
            self.commit = _git(repo, 'rev-parse', '--verify', '--quiet',
                               f'{ref}^{{commit}}')
        except BaselineError as err:
            raise BaselineError(
                f'{ref!r} is not a commit of this repository') from err
        self.short = self.commit[:7]
        self.subject = _git(repo, 'log', '-1', '--format=%s', self.commit)
        self.path = None
        self.python = None

    @property
    def venv_name(self):
        return f'baseline-{self.commit[:12]}'

    @property
    def title(self):
        if self.ref.startswith(self.short):
            return f'uhttp.workers baseline {self.short}'
        return f'uhttp.workers baseline {self.ref} ({self.short})'

    def checkout(self):
        """`git worktree add` of the commit into a new temporary directory."""
        self.path = tempfile.mkdtemp(prefix='uhttp-bench-baseline-')
        os.rmdir(self.path)  # git creates it
        _git(self.repo, 'worktree', 'add', '--detach', self.path,
             self.commit)
        return self.path

    def install(self, ensure_venv, venvs):
        """The venv's python, with this commit's uhttp.workers installed
        from the worktree (ensure_venv is run.py's, which reuses a venv whose
        check passes)."""
        venv = os.path.realpath(os.path.join(venvs, self.venv_name))
        check = ("import os, importlib.metadata as m, uhttp.workers as w; "
                 f"assert os.path.realpath(w.__file__).startswith({venv!r}); "
                 "print(m.version('uhttp-workers'), "
                 "m.version('uhttp-server'))")
        try:
            self.python = ensure_venv(self.venv_name, [self.path], check)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            raise BaselineError(str(err)) from err
        return self.python

    def remove(self):
        """Remove the temporary worktree (idempotent); a text saying what
        went wrong, or None."""
        if not self.path:
            return None
        problem = None
        try:
            _git(self.repo, 'worktree', 'remove', '--force', self.path)
        except (BaselineError, OSError, subprocess.SubprocessError) as err:
            problem = f'{err}; the directory was deleted and pruned instead'
            shutil.rmtree(self.path, ignore_errors=True)
            try:
                _git(self.repo, 'worktree', 'prune')
            except (BaselineError, OSError,
                    subprocess.SubprocessError) as again:
                problem += f' (prune failed: {again})'
        self.path = None
        return problem
