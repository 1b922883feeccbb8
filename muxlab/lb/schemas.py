"""Writes the committed contracts in docs/: the load balancer JSON Schema (editors use it for
completion) and the managers' OpenAPI document. `python -m muxlab.lb.schemas`."""
from __future__ import annotations

import json
from pathlib import Path

from .azure import json_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"


def main() -> None:
    (DOCS / "loadbalancer.schema.json").write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    try:
        from manager.api import app  # FastAPI: present where the node extras are installed
    except ImportError:
        print("skipped docs/openapi.json (install the node extras: pip install -e '.[node]')")
    else:
        (DOCS / "openapi.json").write_text(json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {DOCS}/loadbalancer.schema.json and openapi.json")


if __name__ == "__main__":
    main()
