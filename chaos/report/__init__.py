"""Reports for people and machines, all from one dict (model.build_report): report.json, a terminal
summary, JUnit XML for CI and a self-contained HTML page with hand-written SVG plots."""

from chaos.report.html import render_html, write_html
from chaos.report.junit import build_junit, write_junit
from chaos.report.model import build_report, read_report, write_report
from chaos.report.summary import format_summary

__all__ = ["build_junit", "build_report", "format_summary", "read_report", "render_html", "write_html",
           "write_junit", "write_report"]
