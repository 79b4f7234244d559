"""A dispatcher that owns helper services and run-once jobs (real processes)."""

import os
import signal

from conftest import pid_alive, wait_until
from test_service import free_port

APP = 'owned_app.py'


def service_status(server):
    return server.get('/status').json()['services'][0]


def test_workers_use_the_service_and_it_is_restarted_and_stopped(
        start_server, tmp_path):
    starts = tmp_path / 'starts'
    server = start_server(APP, env={
        'SERVICE_PORT': str(free_port()), 'SERVICE_STARTS': str(starts)},
        ready_workers=2)
    wait_until(lambda: service_status(server)['state'] == 'ready', 15,
               message=lambda: server.log)
    first = server.get('/api/helper')
    assert first.status == 200
    helper_pid = first.json()['pid']
    assert service_status(server)['pid'] == helper_pid
    os.kill(helper_pid, signal.SIGKILL)
    wait_until(lambda: service_status(server)['state'] == 'ready'
               and service_status(server)['pid'] != helper_pid, 20)
    again = server.get('/api/helper')
    assert again.status == 200 and again.json()['pid'] != helper_pid
    assert service_status(server)['restarts'] == 1
    replacement = again.json()['pid']
    server.stop()
    assert server.proc.returncode == 0
    wait_until(lambda: not pid_alive(replacement), 10,
               message='the service outlived the dispatcher')


def test_failed_service_gives_clients_a_clear_error(start_server):
    server = start_server(APP, env={
        'SERVICE_PORT': str(free_port()), 'SERVICE_KIND': 'crash'},
        ready_workers=2)
    wait_until(lambda: service_status(server)['state'] == 'failed', 30)
    answer = server.get('/api/helper')
    assert answer.status == 503
    assert answer.json()['state'] == 'failed'
    assert "service 'helper' has failed after 2 restarts" in \
        answer.json()['error']
    server.wait_log(r'helper')


def test_two_dispatchers_run_a_job_once_and_fail_over(start_server,
                                                      tmp_path):
    env = {'JOB_FILE': str(tmp_path / 'runs'),
           'JOB_LOCK': str(tmp_path / 'jobs.lock'), 'JOB_INTERVAL': '0.3'}
    first = start_server(APP, env=env, ready_workers=2)
    second = start_server(APP, env=env, ready_workers=2)
    job_pids = {first.get('/status').json()['jobs']['pid']: first,
                second.get('/status').json()['jobs']['pid']: second}
    runs = tmp_path / 'runs'

    def runners():
        if not runs.exists():
            return []
        return [int(line.split()[0]) for line in runs.read_text().splitlines()]
    wait_until(lambda: len(runners()) >= 6, 20)
    assert len(set(runners())) == 1, runners()
    holder_pid = runners()[0]
    assert holder_pid in job_pids
    holder = job_pids[holder_pid]
    count = len(runners())
    holder.signal(signal.SIGKILL)  # the whole holding dispatcher dies
    wait_until(lambda: len(set(runners()[count:])) == 1
               and runners()[-1] != holder_pid, 20,
               message='the other dispatcher did not take over')
    survivor = [pid for pid in job_pids if pid != holder_pid][0]
    assert runners()[-1] == survivor
