"""airbundle: carry container images and Git repositories across an air gap."""

from __future__ import annotations

__version__ = "0.1.0"
