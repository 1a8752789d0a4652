"""``forgeline diagram``: the architecture picture (SVG and PNG) of the deployment these settings describe.

Drawn from the code's topic list and the settings in force (router thresholds, budget cap,
providers file with each provider's cost, cache lifetime, bucket and CDN), so it cannot go stale:
regenerate it instead of editing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli._console import console
from services.common.diagram import Facts, PathProvider, render_svg
from services.common.settings import BudgetSettings, CacheSettings, S3Settings, TopicSettings
from services.common.topics import Topics
from services.generator.settings import GeneratorSettings
from services.providers.catalog import load_providers_file
from services.router.settings import RouterSettings
from services.storage.settings import StorageSettings


def facts_from_settings() -> Facts:
    """The diagram's facts from the environment, read the way each service reads its own settings."""
    router, s3 = RouterSettings(), S3Settings()
    catalog = load_providers_file(GeneratorSettings().providers_file)
    return Facts(
        topics=Topics.from_settings(TopicSettings()), depth_high=router.depth_high, depth_low=router.depth_low,
        cap_usd=BudgetSettings().cap_usd, primary=PathProvider.of(catalog.primary),
        fallback=PathProvider.of(catalog.fallback), cache_ttl_s=StorageSettings().cache_ttl_s, bucket=s3.bucket,
        cdn=str(s3.public_base_url) if s3.public_base_url is not None else "the bucket's public URL",
        cache_shared=CacheSettings().scope == "shared",
    )


def svg_to_png(svg: str, out: Path) -> None:
    """Rasterise with CairoSVG (the ``dev`` extra; it needs the system's libcairo2)."""
    try:
        import cairosvg
    except (ImportError, OSError) as exc:  # OSError: cairocffi found no libcairo
        raise typer.BadParameter(
            f"PNG output needs CairoSVG and libcairo2 ({exc}): pip install 'forgeline[dev]' and "
            "apt-get install libcairo2, or pass --no-png") from None
    cairosvg.svg2png(bytestring=svg.encode(), write_to=str(out), scale=1.25, background_color="white")


def diagram(
    out: Annotated[Path, typer.Option(help="The SVG file to write.")] = Path("docs/architecture.svg"),
    png: Annotated[bool, typer.Option(help="Also write a PNG next to it (same name, .png).")] = True,
) -> None:
    """Draw the architecture diagram of the deployment these settings describe, as SVG (and PNG)."""
    svg = render_svg(facts_from_settings())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(svg)
    written = [out]
    if png:
        svg_to_png(svg, out.with_suffix(".png"))
        written.append(out.with_suffix(".png"))
    console.print(f"wrote {' and '.join(map(str, written))}")
