"""The lab as a picture (SVG): nodes grouped by role in columns (clients, edge, MUXes and
hosts, VMs; managers on the management network below), links as lines, and optionally
paths drawn over the links, each in its own colour with numbered steps (`muxlab trace`).

The layout is fixed by role, so no graph-layout engine is needed; the SVG is built with the
standard library's ElementTree.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

COLOURS = {"request": "#1f6fd1", "reply": "#d9480f"}
ROLE_FILL = {"client": "#e7f5ff", "edge": "#fff3bf", "mux": "#d3f9d8", "host": "#f3d9fa", "vm": "#ffe8cc",
             "manager": "#e9ecef"}
ROW = 64
BOX_W, BOX_H = 96, 36


def layout(lab) -> dict[str, tuple[float, float]]:
    """Node -> centre (x, y). MUXes stack above hosts in one column; each host sits level
    with its VMs in the next column; clients and the edge are centred on the left."""
    pos: dict[str, tuple[float, float]] = {}
    y = 1.0
    for m in lab.muxes:
        pos[m.name] = (460, y * ROW)
        y += 1
    y += 0.5
    for h in lab.hosts:
        vms = lab.vms_on(h.name) or [None]
        first = y
        for vm in vms:
            if vm is not None:
                pos[vm.name] = (680, y * ROW)
            y += 1
        pos[h.name] = (460, (first + y - 1) / 2 * ROW)
    middle = (y - 1) / 2 * ROW + ROW / 2
    pos["edge"] = (250, middle)
    n = len(lab.clients)
    for i, c in enumerate(lab.clients):
        pos[c.name] = (70, middle + (i - (n - 1) / 2) * ROW)
    bottom = (y + 0.5) * ROW
    for i, m in enumerate(lab.managers):
        pos[m] = (250 + i * 130, bottom)
    return pos


def _clip(frm: tuple[float, float], to: tuple[float, float]) -> tuple[float, float]:
    """Where the line from `frm`'s centre to `to`'s leaves `frm`'s box (arrows stay visible)."""
    dx, dy = to[0] - frm[0], to[1] - frm[1]
    limits = [(BOX_W / 2 + 3) / abs(dx) if dx else float("inf"), (BOX_H / 2 + 3) / abs(dy) if dy else float("inf")]
    f = min(min(limits), 0.5)
    return frm[0] + dx * f, frm[1] + dy * f


def topology_svg(lab, links, paths: dict[str, list[str]] | None = None, title: str = "") -> str:
    pos = layout(lab)
    width = 780
    height = max(y for _, y in pos.values()) + ROW
    svg = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", width=str(width), height=str(int(height)),
                     viewBox=f"0 0 {width} {int(height)}", style="font-family: sans-serif; font-size: 12px")
    defs = ET.SubElement(svg, "defs")
    for name, colour in COLOURS.items():
        marker = ET.SubElement(defs, "marker", id=f"arrow-{name}", viewBox="0 0 10 10", refX="9", refY="5",
                               markerWidth="7", markerHeight="7", orient="auto-start-reverse")
        ET.SubElement(marker, "path", d="M 0 0 L 10 5 L 0 10 z", fill=colour)
    ET.SubElement(svg, "rect", x="0", y="0", width=str(width), height=str(int(height)), fill="white")
    if title:
        ET.SubElement(svg, "text", x="10", y="20", style="font-weight: bold").text = title
    for link in links:
        (x1, y1), (x2, y2) = pos[link.a], pos[link.b]
        ET.SubElement(svg, "line", x1=str(x1), y1=str(y1), x2=str(x2), y2=str(y2), stroke="#adb5bd")
    if lab.managers:
        ys = [pos[m][1] for m in lab.managers]
        ET.SubElement(svg, "text", x="10", y=str(ys[0] + 4), fill="#868e96").text = "management:"
    for offset, (name, nodes) in zip((-5, 5), (paths or {}).items()):
        colour = COLOURS.get(name, "#2b8a3e")
        drawn: set[tuple[str, str]] = set()
        for step, (a, b) in enumerate(zip(nodes, nodes[1:]), 1):
            # a segment crossed back (MUX to edge after edge to MUX) runs beside the first
            shift = offset + (8 if (b, a) in drawn else 0) * (1 if offset > 0 else -1)
            drawn.add((a, b))
            (x1, y1), (x2, y2) = _clip(pos[a], pos[b]), _clip(pos[b], pos[a])
            y1, y2 = y1 + shift, y2 + shift
            ET.SubElement(svg, "line", x1=str(x1), y1=str(y1), x2=str(x2), y2=str(y2), stroke=colour,
                          **{"stroke-width": "3", "marker-end": f"url(#arrow-{name})", "opacity": "0.85"})
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2 + shift * 3
            ET.SubElement(svg, "text", x=str(mx), y=str(my), fill=colour, style="font-weight: bold").text = str(step)
    for node, (x, y) in pos.items():
        role = lab.role_of(node)
        ET.SubElement(svg, "rect", x=str(x - BOX_W / 2), y=str(y - BOX_H / 2), width=str(BOX_W), height=str(BOX_H), rx="6",
                      fill=ROLE_FILL.get(role, "white"), stroke="#495057")
        ET.SubElement(svg, "text", x=str(x), y=str(y - 2), style="text-anchor: middle; font-weight: bold").text = node
        ET.SubElement(svg, "text", x=str(x), y=str(y + 12), style="text-anchor: middle; font-size: 10px",
                      fill="#495057").text = role
    legend_y = 40
    for name in (paths or {}):
        ET.SubElement(svg, "line", x1="600", y1=str(legend_y - 4), x2="630", y2=str(legend_y - 4),
                      stroke=COLOURS.get(name, "#2b8a3e"), **{"stroke-width": "3"})
        ET.SubElement(svg, "text", x="636", y=str(legend_y)).text = name
        legend_y += 16
    return ET.tostring(svg, encoding="unicode")
