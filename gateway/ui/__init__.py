"""The live dashboard at ``/ui``: sessions (``session.py``), the numbers it shows (``data.py``), server-side SVG
charts (``charts.py``), and its templates and static files, all served by poolgate itself (no CDN)."""
