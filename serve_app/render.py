"""``sightwire render``: ``render img_… -o out.png`` draws one image's results; ``render grp_…
-o page.html`` writes the group's page. Records come through the light client; the drawing and
the page are ``imaging.pictures``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from PIL import Image as PILImage

from core.failures import Failure
from core.settings import Settings
from imaging.pictures import Annotations, draw, group_page, load_pictures
from sightwire_client import AsyncClient
from sightwire_client.errors import SightwireError
from sightwire_client.models import Image


async def render(resource_id: str, *, api_key: str | None, api_url: str | None, limit: int,
                 settings: Settings) -> str | PILImage.Image:
    """A group's HTML page, or an image with its results drawn. Raises ``SightwireError`` or
    ``Failure`` (the image could not be fetched again)."""
    async with AsyncClient(api_key, base_url=api_url) as client:
        if resource_id.startswith("grp_"):
            group = await client.get_group(resource_id)
            images: list[Image] = []
            async for image in client.iter_group_images(group.id):
                images.append(image)
                if len(images) >= limit:
                    break
            return group_page(group, images, await load_pictures([i.url for i in images], settings))
        image = await client.get_image(resource_id)
    [picture] = await load_pictures([image.url], settings)
    if isinstance(picture, Failure):
        raise picture
    return draw(picture, Annotations.of_image(image))


def cmd_render(args: argparse.Namespace) -> int:
    output = Path(args.output)
    try:
        result = asyncio.run(render(args.id, api_key=args.api_key, api_url=args.api_url, limit=args.limit,
                                    settings=Settings.from_env()))
    except (SightwireError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Failure as failure:
        print(f"error: the image could not be fetched again ({failure.code}): {failure.message}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        output.write_text(result, encoding="utf-8")
    else:
        result.save(output)
    print(f"{args.id} rendered to {output}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """``render ID -o OUT``."""
    command = commands.add_parser("render", help="draw an image's results (PNG) or a group's (HTML page)")
    command.add_argument("id", help="img_… (an image file: .png, .jpg) or grp_… (an HTML page)")
    command.add_argument("-o", "--output", required=True)
    command.add_argument("--limit", type=int, default=200, help="a group's first N images (default: 200)")
    command.add_argument("--api-key", help="default: $SIGHTWIRE_API_KEY")
    command.add_argument("--api-url", help="default: $SIGHTWIRE_API_URL or http://127.0.0.1:8000")
    command.set_defaults(func=cmd_render)
