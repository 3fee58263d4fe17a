"""The data owner's HTML report: report.json as one self-contained page with charts."""

from sandbox.report_html.page import RenderedPage, render_html, render_page

__all__ = ["RenderedPage", "render_html", "render_page"]
