"""Figures shared by the CLI, the notebooks and the dashboard."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def class_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int | None = None,
               padding: int = 2) -> torch.Tensor:
    """One row per class (classes with fewer images are padded with blank tiles), as a [C, H, W] image."""
    per_class = per_class or max(1, int(torch.bincount(labels, minlength=num_classes).max()))
    blank = torch.ones_like(images[0]) if len(images) else None
    tiles = []
    for c in range(num_classes):
        of_class = images[labels == c][:per_class]
        tiles.extend(list(of_class))
        tiles.extend([blank] * (per_class - len(of_class)))
    return make_grid(torch.stack(tiles), nrow=per_class, padding=padding, pad_value=1.0)


def save_class_grid(path: Path, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    per_class: int | None = None) -> None:
    """Write a per-class grid to a PNG (the directory is created)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(class_grid(images, labels, num_classes, per_class), str(path))


def grid_to_png_bytes(grid: torch.Tensor) -> bytes:
    """A [C, H, W] image in [0, 1] as PNG bytes (for HTML reports and hover images)."""
    import io

    from PIL import Image

    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode()


MARKERS = {"teacher": "circle", "student": "x", "real": "diamond"}


def embedding_figure(layout, labels, sources, class_names: tuple[str, ...] = (), title: str = "",
                     hover_text=None):
    """Plotly scatter of a shared 2-D map: colour = class, marker = teacher / student / real."""
    import numpy as np
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    palette = qualitative.Plotly + qualitative.D3
    labels, sources = np.asarray(labels), np.asarray(sources)
    figure = go.Figure()
    for source in [s for s in MARKERS if s in set(sources.tolist())]:
        for c in sorted(set(labels.tolist())):
            mask = (labels == c) & (sources == source)
            if not mask.any():
                continue
            name = class_names[c] if c < len(class_names) else str(c)
            figure.add_trace(go.Scatter(  # SVG: a few thousand points, no WebGL needed
                x=layout[mask, 0], y=layout[mask, 1], mode="markers", name=f"{name} ({source})",
                legendgroup=name, marker=dict(symbol=MARKERS[source], size=6 if source != "real" else 5,
                                              color=palette[c % len(palette)],
                                              opacity=0.85 if source != "real" else 0.35),
                text=None if hover_text is None else np.asarray(hover_text)[mask],
                hovertemplate=f"class {name}, {source}<br>%{{text}}<extra></extra>" if hover_text is not None
                else f"class {name}, {source}<extra></extra>"))
    figure.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"),
                         legend=dict(itemsizing="constant"), margin=dict(l=10, r=10, t=40, b=10), height=520,
                         uirevision="map")  # a refreshed map keeps the user's zoom and hidden classes
    return figure


def class_measures_figure(report, title: str = "Per-class generator diagnostics"):
    """Bar charts of the per-class measures of a GeneratorReport; flagged classes are marked in red."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    names = [c.name for c in report.classes]
    colours = ["crimson" if c.flags else "steelblue" for c in report.classes]
    panels = [("feature diversity", [c.feature_diversity for c in report.classes]),
              ("pixel diversity", [c.pixel_diversity for c in report.classes]),
              ("teacher confidence", [c.confidence for c in report.classes]),
              ("prediction share", [c.prediction_share for c in report.classes])]
    if report.conditional_accuracy is not None:
        panels.insert(0, ("conditional accuracy", [c.conditional_accuracy for c in report.classes]))
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
    for i, (_, values) in enumerate(panels, start=1):
        hover = ["<br>".join(c.flags) or "no flag" for c in report.classes]
        figure.add_trace(go.Bar(x=names, y=values, marker_color=colours, hovertext=hover, showlegend=False),
                         row=1, col=i)
    figure.update_layout(title=title, height=320, margin=dict(l=10, r=10, t=60, b=10))
    return figure
