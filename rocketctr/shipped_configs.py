"""Where the shipped training configs (configs/*.yaml) are, in a source checkout and in an installed wheel.

The configs stay in the repository's top-level configs/ folder (the design card's layout), which is not a Python
package; a wheel installs them under <prefix>/share/rocketctr/configs (pyproject.toml `data-files`). The demo and
the benches take their default config from here, so `pip install rocketctr` gives a working `rocketctr demo`.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

SHARE = Path("share") / "rocketctr" / "configs"


def candidate_dirs() -> list[Path]:
    """The source checkout's configs/ first (a checkout or an editable install), then the installed copies."""
    return [Path(__file__).resolve().parents[1] / "configs", Path(sys.prefix) / SHARE, Path(site.USER_BASE) / SHARE]


def config_path(name: str) -> Path:
    """configs/NAME.yaml (NAME with or without .yaml); a clear error listing where it was looked for."""
    file = name if name.endswith(".yaml") else f"{name}.yaml"
    dirs = candidate_dirs()
    for d in dirs:
        if (d / file).is_file():
            return d / file
    raise FileNotFoundError(f"shipped config {file!r} not found in {', '.join(map(str, dirs))}: pass --config PATH, "
                            f"or reinstall rocketctr (its wheel installs configs/ under <prefix>/{SHARE})")
