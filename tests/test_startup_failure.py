"""A pool that cannot start at all fails the start visibly.

When every worker of a pool ends before any of them was ready (setup()
raised, the worker class failed, the script has no `__main__` guard under
spawn), the dispatcher says so once and exits with status 1, so that a
deploy fails where it can be seen; WorkerPool(exit_on_startup_failure=False)
keeps retrying instead.
"""

from conftest import wait_until

APP = 'startup_fail_app.py'
EXIT_MESSAGE = (r'CRITICAL.*pool Broken: all 3 workers failed at start-up '
                r'\(setup failed; the error is logged above\)\. Exiting with '
                r'status 1; WorkerPool\(exit_on_startup_failure=False\) keeps '
                r'retrying instead')


def test_every_worker_failing_setup_exits_with_status_1(start_server):
    server = start_server(APP)
    assert server.wait_exit() == 1
    assert server.count_log(EXIT_MESSAGE) == 1
    # each worker said why once: no restart loop repeating it
    assert server.count_log(r'ConnectionError: database at db\.invalid'
                            r':5432 refused') == 3
    assert server.count_log(r'setup\(\) failed') == 3


def test_keep_retrying_leaves_the_service_up(start_server):
    server = start_server(APP, env={'KEEP_RETRYING': '1'}, ready_workers=1)
    server.wait_log(r'pool Broken degraded')
    assert server.get('/broken/pid').status == 503
    assert server.get('/healthy').json() == {'ok': True}
    assert server.count_log('failed at start-up') == 0
    assert server.proc.poll() is None


def test_one_failing_worker_does_not_stop_the_start(start_server, tmp_path):
    flag = tmp_path / 'fail'
    flag.write_text('x')
    server = start_server(APP, env={'FAIL_ONLY': '1',
                                    'FAIL_FLAG': str(flag)})
    server.wait_log(r'Broken\[1\].*setup\(\) failed')
    # the failed worker is started again once a sibling is ready (its
    # second setup() succeeds), and the pool serves
    wait_until(lambda: server.count_log(r'worker Broken\[1\].* ready') >= 1,
               20, message=lambda: f'worker 1 never became ready:\n'
               f'{server.log}')
    assert server.get('/broken/pid').status == 200
    assert server.count_log('failed at start-up') == 0
    assert server.proc.poll() is None


def test_missing_main_guard_is_said_once_and_exits_1(start_server):
    server = start_server('no_main_guard_app.py')
    assert server.wait_exit() == 1
    assert server.count_log(
        r"CRITICAL.*pool Spawned: all 2 workers failed at start-up \(a "
        r"worker process imported the main module and it called "
        r"Dispatcher\.run\(\): start the dispatcher under `if __name__ == "
        r"'__main__':`") == 1
    assert server.count_log('__main__') == 1
