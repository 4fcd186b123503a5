import pytest_asyncio

from server.media import MediaHub


@pytest_asyncio.fixture
async def hub():
    hub = MediaHub(ice_servers=[])
    yield hub
    await hub.close()
