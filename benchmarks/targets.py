"""The project's performance targets, computed from one run's medians.

Each target is a function of the summary that run.py builds (entry name ->
scenario -> median 2xx/s, p99, CPU per request, summed error counts) and
returns its value as text and whether it is met: True, False, or None when
the run lacks a number it needs (a peer unavailable, a scenario that failed).

Only reads the summary: it measures nothing and starts nothing.
"""

DISPATCHER_CPU_LIMIT_US = 35.0
POOL_SCENARIOS = ('pool_c32', 'pool_c256', 'pool_c1024')
_ERROR_COUNTS = ('non_2xx', 'connect_errors', 'read_errors', 'write_errors',
                 'timeouts', 'failed_runs', 'crashes')


def _row(summary, name, scenario):
    return summary.get(name, {}).get(scenario)


def _num(row, metric):
    return None if row is None else row.get(metric)


def _errors(row):
    return sum(row.get(count) or 0 for count in _ERROR_COUNTS)


def _ratio_target(value_row, base_row, metric, minimum, label):
    """value ÷ base of `metric` at least `minimum`."""
    value, base = _num(value_row, metric), _num(base_row, metric)
    if not value or not base:
        return 'n/a (no number)', None
    ratio = value / base
    return (f'{ratio:.2f}× ({value:,.0f} vs {label} {base:,.0f})',
            ratio >= minimum)


def _scaling(connections):
    def target(summary, name):
        row = _row(summary, name, f'pool_c{connections}')
        base = _row(summary, name, 'pool_c32')
        if row is None or not _num(base, 'ok_per_s'):
            return 'n/a (no number)', None
        errors = _errors(row)
        ok = _num(row, 'ok_per_s') or 0
        ratio = ok / base['ok_per_s']
        return (f'{ratio:.2f}× ({ok:,.0f} vs {base["ok_per_s"]:,.0f} at '
                f'c=32), {errors} errors', errors == 0 and ratio >= 0.9)
    return target


def _p99_vs_gunicorn(summary, name):
    mine = _num(_row(summary, name, 'pool_c1024'), 'p99_ms')
    theirs = _num(_row(summary, 'gunicorn', 'pool_c1024'), 'p99_ms')
    if not mine or not theirs:
        return 'n/a (no number)', None
    return f'{mine:,.1f} ms vs gunicorn {theirs:,.1f} ms', mine <= theirs


def _dispatcher_cpu(summary, name):
    """Per response: a run whose errors are cheap 503s shows a low figure,
    so the errors are named next to it."""
    values = {}
    parts = []
    for scenario in POOL_SCENARIOS:
        row = _row(summary, name, scenario)
        value = _num(row, 'disp_cpu_us_per_req')
        if value is None:
            continue
        values[scenario] = value
        errors = _errors(row)
        parts.append(f'c={scenario[len("pool_c"):]} {value:.0f} µs'
                     + (f' ({errors} errors)' if errors else ''))
    if not values:
        return 'n/a (no number)', None
    worst = max(values.values())
    return ', '.join(parts), worst <= DISPATCHER_CPU_LIMIT_US


def _pool_vs_sync(summary, name):
    return _ratio_target(_row(summary, name, 'pool_c32'),
                         _row(summary, name, 'health_c32'), 'ok_per_s', 0.6,
                         '@sync')


def _vs_uvicorn(scenario, minimum):
    def target(summary, name):
        return _ratio_target(_row(summary, name, scenario),
                             _row(summary, 'uvicorn', scenario), 'ok_per_s',
                             minimum, 'uvicorn')
    return target


# (what, threshold, function of (summary, entry name))
TARGETS = (
    ('pool route c=256: zero errors, 2xx/s vs its c=32',
     '0 errors and ≥ 0.90×', _scaling(256)),
    ('pool route c=1024: zero errors, 2xx/s vs its c=32',
     '0 errors and ≥ 0.90×', _scaling(1024)),
    ('pool route c=1024: p99 vs gunicorn\'s', '≤ gunicorn',
     _p99_vs_gunicorn),
    ('dispatcher\'s own CPU per pool request (c=32/256/1024)',
     f'≤ {DISPATCHER_CPU_LIMIT_US:.0f} µs each', _dispatcher_cpu),
    ('pool route vs the @sync route /health (c=32)', '≥ 0.60×',
     _pool_vs_sync),
    ('pool route vs uvicorn\'s (c=32)', '≥ 0.60×',
     _vs_uvicorn('pool_c32', 0.6)),
    ('@sync /health vs uvicorn\'s (c=32)', '≥ 1.00×',
     _vs_uvicorn('health_c32', 1.0)),
    ('static 4 KiB vs uvicorn\'s (c=32)', '≥ 1.00×',
     _vs_uvicorn('static_c32', 1.0)),
)


def evaluate(summary, name):
    """[{target, threshold, value, met}] for one entry of the run."""
    rows = []
    for what, threshold, func in TARGETS:
        value, met = func(summary, name)
        rows.append({'target': what, 'threshold': threshold,
                     'value': value, 'met': met})
    return rows


def verdict(met):
    """A table cell for met."""
    if met is None:
        return 'n/a'
    return 'met' if met else '**not met**'
