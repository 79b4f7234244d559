"""The WebSocket chat example in a real browser: two tabs, one room.

Chromium comes from the system (Debian's `chromium` package, at
/usr/bin/chromium) and is driven by Playwright's Python package; no browser
is ever downloaded. Without either, or when the browser cannot start, the
test skips and says why.
"""

import os
import shutil

import pytest

from conftest import ROOT

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu',
                 '--disable-background-networking',
                 '--disable-component-update', '--disable-sync',
                 '--no-first-run']
EXAMPLE = os.path.join(ROOT, 'examples', 'ws_chat.py')
WAIT_MS = 15000   # each wait of the page, at most


@pytest.fixture(scope='module')
def chromium():
    """A headless Chromium under Playwright, or a skip saying why not."""
    if not (os.path.exists(CHROMIUM) or shutil.which('chromium')):
        pytest.skip(f'no Chromium at {CHROMIUM}: apt-get install chromium')
    sync_api = pytest.importorskip(
        'playwright.sync_api',
        reason='Playwright is not installed: pip install playwright')
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM)
            else shutil.which('chromium'), args=CHROMIUM_ARGS,
            timeout=WAIT_MS)
    except sync_api.Error as err:
        playwright.stop()
        pytest.skip(f'Chromium does not start under Playwright: '
                    f'{str(err).splitlines()[0]}')
    yield browser
    browser.close()
    playwright.stop()


def join(page, base, name, room):
    """Open the chat page, join `room` as `name`, wait until connected."""
    page.goto(base + '/', timeout=WAIT_MS)   # redirected to the page
    page.fill('#name', name)
    page.fill('#room', room)
    page.click('#join')
    page.wait_for_function(
        'room => document.getElementById("status").textContent === '
        '"in room " + room', arg=room, timeout=WAIT_MS)


def messages(page):
    """The lines of the page's message list."""
    return page.locator('#messages li').all_inner_texts()


def test_two_tabs_chat_in_one_room(chromium, start_server):
    server = start_server(EXAMPLE, ready_workers=2)
    base = f'http://127.0.0.1:{server.port}'
    context = chromium.new_context()
    try:
        ada, bob = context.new_page(), context.new_page()
        join(ada, base, 'ada', 'garden')
        join(bob, base, 'bob', 'garden')
        # bob's arrival reached ada: both are in the room's group now
        ada.locator('#messages li', has_text='server: bob joined').wait_for(
            timeout=WAIT_MS)
        ada.fill('#text', 'hello from the first tab')
        ada.click('#send')
        bob.locator('#messages li.message').first.wait_for(timeout=WAIT_MS)
        assert 'ada: hello from the first tab' in messages(bob)
        assert bob.input_value('#text') == ''
        assert ada.input_value('#text') == ''   # sent, so the field cleared
    finally:
        context.close()
