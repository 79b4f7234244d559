"""An application written with type hints, checked by mypy --strict
against the package's own annotations (tests/test_typing.py)."""

from typing import Any

import uhttp.workers as _workers


class Items(_workers.Worker):
    def setup(self) -> None:
        self.items: dict[int, str] = {}

    @_workers.api('/items/{id:int}', 'GET')
    def get_item(self, request: _workers.Request) -> dict[str, Any]:
        self.log.info('item %s', request.path_params['id'])
        return {'id': request.path_params['id']}


class App(_workers.Dispatcher):
    @_workers.sync('/health')
    def health(self, client: Any, path_params: dict[str, Any]) -> None:
        client.respond({'ok': True})

    def on_start(self) -> None:
        self.log.info('up')


if __name__ == '__main__':
    App(port=8080, pools=[_workers.WorkerPool(Items, routes=['/items/**'])]).run()
