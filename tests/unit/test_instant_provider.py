"""The instant provider: a valid PNG of the spec's size at once, distinct bytes per spec, the same for a repeat."""

from __future__ import annotations

import io

from PIL import Image
from redis.asyncio import Redis

from services.common.contracts import ImageSpec
from services.common.images import sniff_content_type
from services.common.redis import KeySpace
from services.providers.catalog import ProvidersFile, build_candidates
from services.providers.instant import InstantProvider


async def test_each_spec_gets_distinct_valid_png_of_its_size() -> None:
    provider = InstantProvider()
    sword = await provider.generate(ImageSpec(prompt="bench sword 1", width=256, height=256))
    other = await provider.generate(ImageSpec(prompt="bench sword 2", width=256, height=256))
    again = await provider.generate(ImageSpec(prompt="bench sword 1", width=256, height=256))
    wide = await provider.generate(ImageSpec(prompt="bench sword 1", width=512, height=128))

    assert sword.data != other.data
    assert sword.data == again.data and sword.deterministic
    assert sniff_content_type(sword.data) == "image/png" == sword.content_type
    with Image.open(io.BytesIO(sword.data)) as image:
        image.load()  # CRCs and the pixel data are checked
        assert image.size == (256, 256)
        assert len(image.text["forgeline-spec"]) == 64
    with Image.open(io.BytesIO(wide.data)) as image:
        assert image.size == (512, 128)


def test_providers_file_accepts_instant_without_keys() -> None:
    catalog = ProvidersFile.model_validate({"primary": [{"name": "instant", "type": "instant"}],
                                            "fallback": [{"name": "instant", "type": "instant"}]})
    assert catalog.primary[0].cost == 0
    unused = Redis()  # never connects: nothing is called on the candidate
    (candidate,) = build_candidates(catalog.primary, http=None, redis=unused, keys=KeySpace("t:"), environ={})
    assert isinstance(candidate.adapter, InstantProvider) and candidate.keys is None
