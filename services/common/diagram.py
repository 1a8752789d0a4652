"""The architecture diagram as SVG, drawn from the code's own topic list and the deployment's settings.

``forgeline diagram`` writes it for the docs (SVG and PNG); ingest's ``/dashboard`` serves the
same drawing with a slot for a live figure in each box (``<text data-figure="…">``). Every
topic of ``TOPIC_SPECS`` must have its place here, or drawing fails: a new topic cannot
silently go missing from the picture.

Colours: primary (free) path green, fallback (paid) path blue, shared components grey, routing orange.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, Protocol
from xml.sax.saxutils import escape, quoteattr

from services.common.topics import DLQ_SUFFIX, TOPIC_SPECS, Topics

PRIMARY = "#27ae60"
FALLBACK = "#3498db"
SHARED = "#95a5a6"
ROUTING = "#f39c12"

Kind = Literal["primary", "fallback", "shared", "routing"]
Side = Literal["l", "r", "t", "b"]
COLOURS: dict[Kind, str] = {"primary": PRIMARY, "fallback": FALLBACK, "shared": SHARED, "routing": ROUTING}
_FILLS: dict[Kind, str] = {"primary": "#eafaf1", "fallback": "#ebf5fb", "shared": "#f4f6f6", "routing": "#fef5e7"}

WIDTH, HEIGHT = 1640, 960
_LINE = 17  # px between text lines


class _Entry(Protocol):
    """A providers-file entry, as the diagram reads it (``services.providers.catalog.ProviderEntry``)."""

    name: str
    type: str

    @property
    def cost(self) -> Decimal: ...


@dataclass(frozen=True)
class PathProvider:
    name: str
    type: str
    cost_usd: Decimal

    @classmethod
    def of(cls, entries: Iterable[_Entry]) -> tuple[PathProvider, ...]:
        return tuple(cls(entry.name, entry.type, entry.cost) for entry in entries)


@dataclass(frozen=True)
class Facts:
    """What the diagram states about one deployment; built from its settings by the caller."""

    topics: Topics
    depth_high: int
    depth_low: int
    cap_usd: Decimal
    primary: tuple[PathProvider, ...]
    fallback: tuple[PathProvider, ...]
    cache_ttl_s: int
    bucket: str
    cdn: str
    cache_shared: bool = False  # FORGELINE_CACHE_SCOPE=shared: every tenant answered from every tenant's results


@dataclass(frozen=True)
class Node:
    id: str
    kind: Kind
    x: int
    y: int
    w: int
    h: int
    lines: tuple[str, ...]
    figures: tuple[str, ...] = ()  # data-figure keys, drawn only on the live page
    topic: bool = False

    def anchor(self, side: Side) -> tuple[int, int]:
        return {"l": (self.x, self.y + self.h // 2), "r": (self.x + self.w, self.y + self.h // 2),
                "t": (self.x + self.w // 2, self.y), "b": (self.x + self.w // 2, self.y + self.h)}[side]


@dataclass(frozen=True)
class Edge:
    source: str
    source_side: Side
    target: str
    target_side: Side
    kind: Kind = "shared"
    via: tuple[tuple[int, int], ...] = ()  # corner points; none: one elbow half way
    dashed: bool = False
    label: str | None = None


@dataclass
class Diagram:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> None:
        self.nodes[node.id] = node


def usd(amount: Decimal) -> str:
    """``$0``, ``$0.0023``, ``$10``: no trailing zeros, never scientific notation."""
    text = f"{amount.normalize():f}"
    return f"${text}"


def _providers(providers: Sequence[PathProvider]) -> tuple[str, ...]:
    return tuple(f"{p.name}{'' if p.name == p.type else f' ({p.type})'} {usd(p.cost_usd)}/image" for p in providers[:4]) + (
        (f"… and {len(providers) - 4} more",) if len(providers) > 4 else ())


def _topic(facts: Facts, key: str, kind: Kind, x: int, y: int, figures: tuple[str, ...] = (), w: int = 230) -> Node:
    return Node(f"topic:{key}", kind, x, y, w, 40 + _LINE * len(figures), (f"[{facts.topics.name(key)}]",), figures,
                topic=True)


def layout(facts: Facts) -> Diagram:
    """Every box and arrow, placed; raises if a topic of ``TOPIC_SPECS`` has no place."""
    d = Diagram()
    hours = facts.cache_ttl_s / 3600
    ttl = f"{hours:g} h" if hours >= 1 else f"{facts.cache_ttl_s} s"
    d.add(Node("backend", "shared", 20, 250, 130, 60, ("game backend", "HTTP or Kafka")))
    d.add(Node("ingest", "shared", 180, 230, 140, 90, ("ingest", "FastAPI: validate,", "cache hits at once"),
               ("latency.total",)))
    d.add(_topic(facts, "generation.requested", "shared", 350, 255, w=220))
    d.add(_topic(facts, "generation.cancel", "shared", 350, 110, w=220))
    d.add(Node("router", "routing", 600, 175, 260, 190, (
        "router", f"queue depth < {facts.depth_high} → Spaces (free)", f"queue depth ≥ {facts.depth_high} → API (paid)",
        f"back to Spaces below {facts.depth_low}", f"paid only under the {usd(facts.cap_usd)}/month cap"),
        ("route.split", "route.reasons")))
    d.add(Node("budget", "shared", 600, 410, 260, 104, ("budget ledger (Redis)",
                                                        f"cap {usd(facts.cap_usd)} per month, tenants' own too"),
               ("budget", "budget.tenants")))
    d.add(_topic(facts, "generation.primary", "primary", 890, 95, ("queue.primary",)))
    d.add(_topic(facts, "generation.fallback", "fallback", 890, 455, ("queue.fallback",)))
    d.add(Node("generator:primary", "primary", 1150, 40, 250, 170,
               ("generator · primary (free)", *_providers(facts.primary)), ("rate.primary", "keys.primary")))
    d.add(Node("generator:fallback", "fallback", 1150, 400, 250, 170,
               ("generator · fallback (paid)", *_providers(facts.fallback)), ("rate.fallback", "keys.fallback")))
    d.add(_topic(facts, "generation.generated", "shared", 1410, 255, w=220))
    d.add(Node("storage", "shared", 1410, 610, 220, 96, ("storage", "content-addressed upload,", "CDN URL"),
               ("stage.stored",)))
    scope = "shared by all tenants" if facts.cache_shared else "per tenant"
    d.add(Node("cache", "shared", 1410, 770, 220, 80, ("result cache", f"Redis + in-process, {ttl}", scope), ("cache",)))
    d.add(Node("blobs", "shared", 1150, 610, 220, 50, ("blob store (S3/R2)", f"bucket {facts.bucket}")))
    d.add(Node("cdn", "shared", 1150, 680, 220, 50, ("CDN", facts.cdn)))
    d.add(_topic(facts, "generation.completed", "shared", 860, 610))
    d.add(_topic(facts, "generation.failed", "shared", 860, 680))
    d.add(Node("subscribers", "shared", 600, 620, 200, 86, ("subscribers", "game backends,", "ingest's SSE")))
    d.add(_topic(facts, "comparison.requested", "shared", 860, 820))
    d.add(Node("comparer", "shared", 600, 800, 200, 80, ("comparer", "VLM or perceptual")))
    d.add(_topic(facts, "comparison.completed", "shared", 330, 790))
    d.add(_topic(facts, "comparison.failed", "shared", 330, 860))
    d.add(Node("dlq", "shared", 20, 560, 200, 96, ("dead letters", "every topic has", f"a {DLQ_SUFFIX} twin"),
               ("dlq",)))
    missing = [spec.key for spec in TOPIC_SPECS if f"topic:{spec.key}" not in d.nodes]
    if missing:
        raise ValueError(f"the diagram has no place for topic(s) {', '.join(missing)}: add them to layout()")

    d.edges += [
        Edge("backend", "r", "ingest", "l"),
        Edge("ingest", "r", "topic:generation.requested", "l"),
        Edge("backend", "t", "topic:generation.requested", "t", via=((85, 200), (460, 200)), label="Kafka produce"),
        Edge("topic:generation.requested", "r", "router", "l", "routing"),
        Edge("backend", "t", "topic:generation.cancel", "l", via=((85, 130),), dashed=True, label="cancel"),
        Edge("topic:generation.cancel", "r", "router", "t", via=((730, 130),), dashed=True),
        Edge("router", "b", "budget", "t", "routing", dashed=True),
        Edge("router", "r", "topic:generation.primary", "l", "primary"),
        Edge("router", "r", "topic:generation.fallback", "l", "fallback"),
        Edge("topic:generation.primary", "r", "generator:primary", "l", "primary"),
        Edge("topic:generation.fallback", "r", "generator:fallback", "l", "fallback"),
        Edge("generator:fallback", "b", "budget", "b", "fallback", via=((1275, 530), (1275, 585), (730, 585)),
             dashed=True, label="reserve, settle"),
        Edge("generator:primary", "r", "topic:generation.generated", "t", "primary", via=((1520, 125),)),
        Edge("generator:fallback", "r", "topic:generation.generated", "b", "fallback", via=((1520, 485),)),
        Edge("topic:generation.generated", "b", "storage", "t"),
        Edge("storage", "l", "blobs", "r", via=((1390, 658), (1390, 640))),
        Edge("blobs", "b", "cdn", "t"),
        Edge("storage", "b", "cache", "t"),
        Edge("storage", "l", "topic:generation.completed", "r", via=((1390, 658), (1390, 595), (1120, 595),
                                                                      (1120, 630))),
        Edge("storage", "l", "topic:generation.failed", "r", via=((1390, 658), (1390, 745), (1120, 745),
                                                                   (1120, 700))),
        Edge("topic:generation.completed", "l", "subscribers", "r"),
        Edge("topic:generation.failed", "l", "subscribers", "r"),
        Edge("storage", "b", "topic:comparison.requested", "r", via=((1520, 740), (1390, 740), (1390, 840))),
        Edge("ingest", "b", "topic:comparison.requested", "b", via=((250, 930), (975, 930))),
        Edge("topic:comparison.requested", "l", "comparer", "r"),
        Edge("comparer", "l", "topic:comparison.completed", "r", via=((580, 840), (580, 810))),
        Edge("comparer", "l", "topic:comparison.failed", "r", via=((580, 840), (580, 880))),
        Edge("comparer", "t", "topic:generation.completed", "l", via=((700, 770), (845, 770)), dashed=True,
             label="with the score"),
    ]
    return d


def render_svg(facts: Facts, *, live: bool = False) -> str:
    """The diagram as a standalone SVG document; ``live`` adds each box's figure slots (filled by the page)."""
    d = layout(facts)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        'font-family="DejaVu Sans, Arial, Helvetica, sans-serif" role="img" '
        'aria-label="Forgeline architecture: primary path green, fallback blue, shared grey, routing orange">',
        "<defs>",
        *(f'<marker id="arrow-{kind}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
          f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
          for kind, colour in COLOURS.items()),
        "</defs>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        '<text x="20" y="34" font-size="22" font-weight="bold" fill="#2c3e50">Forgeline</text>',
        '<text x="150" y="34" font-size="13" fill="#566573">images on demand for game backends: '
        'a free primary path, a paid fallback under a monthly cap</text>',
        *_legend(),
    ]
    parts += [_edge(d, edge) for edge in d.edges]
    parts += [_node(node, live) for node in d.nodes.values()]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _legend() -> list[str]:
    items = (("primary", "primary path (free)"), ("fallback", "fallback path (paid)"), ("shared", "shared"),
             ("routing", "routing"))
    out, x = [], 20
    for kind, label in items:
        out.append(f'<rect x="{x}" y="52" width="14" height="14" rx="3" fill="{COLOURS[kind]}"/>'
                   f'<text x="{x + 20}" y="64" font-size="12" fill="#2c3e50">{escape(label)}</text>')
        x += 40 + 7 * len(label)
    return out


def _node(node: Node, live: bool) -> str:
    colour, fill = COLOURS[node.kind], _FILLS[node.kind]
    radius = 18 if node.topic else 8
    out = [f'<g id={quoteattr("node-" + node.id)} class="node {node.kind}">',
           f'<rect x="{node.x}" y="{node.y}" width="{node.w}" height="{node.h}" rx="{radius}" '
           f'fill="{fill}" stroke="{colour}" stroke-width="2"/>']
    y = node.y + 22
    for index, line in enumerate(node.lines):
        bold = index == 0 and not node.topic
        size = 11 if node.topic else (14 if bold else 12)
        family = ' font-family="DejaVu Sans Mono, monospace"' if node.topic else ""
        weight = ' font-weight="bold"' if bold else ""
        out.append(f'<text x="{node.x + 10}" y="{y}" font-size="{size}"{family}{weight} fill="#2c3e50">'
                   f"{escape(line)}</text>")
        y += _LINE
    if live:
        for key in node.figures:
            out.append(f'<text x="{node.x + 10}" y="{y}" font-size="12" font-weight="bold" fill="{colour}" '
                       f'class="figure" data-figure={quoteattr(key)}>…</text>')
            y += _LINE
    out.append("</g>")
    return "\n".join(out)


def _edge(d: Diagram, edge: Edge) -> str:
    start = d.nodes[edge.source].anchor(edge.source_side)
    end = d.nodes[edge.target].anchor(edge.target_side)
    points = [start, *edge.via] if edge.via else [start, ((start[0] + end[0]) // 2, start[1]),
                                                  ((start[0] + end[0]) // 2, end[1])]
    points.append(_approach(points[-1], end, edge.target_side))
    points.append(end)
    path = " ".join(f"{'M' if i == 0 else 'L'}{x},{y}" for i, (x, y) in enumerate(points))
    dash = ' stroke-dasharray="6 4"' if edge.dashed else ""
    out = (f'<path d="{path}" fill="none" stroke="{COLOURS[edge.kind]}" stroke-width="2"{dash} '
           f'marker-end="url(#arrow-{edge.kind})"/>')
    if edge.label:
        lx, ly = points[1] if len(points) > 2 else start
        out += (f'<text x="{lx + 6}" y="{ly - 6}" font-size="11" font-style="italic" fill="#566573">'
                f"{escape(edge.label)}</text>")
    return out


def _approach(last: tuple[int, int], end: tuple[int, int], side: Side) -> tuple[int, int]:
    """The corner before ``end`` so the arrow enters its side straight on."""
    if side in ("l", "r"):
        return (last[0], end[1])
    return (end[0], last[1])
