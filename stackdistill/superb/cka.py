"""Linear CKA (Kornblith et al., 2019) between the layers of two encoders, and its heatmap.

    matrix = superb.cka_matrix(student_layers, teacher_layers)   # lists of (frames, dim)
    superb.plot_cka(matrix, "cka.png", "student", "teacher")

Each layer is a (n, d) array of frame features; row i of every array must be the same frame
(same utterance, same time) in both encoders.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"CKA features must be (examples, dims), got shape {x.shape}")
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same examples in both: {len(x)} vs {len(y)} rows")
    xc, yc = _centred(x), _centred(y)
    denominator = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    if denominator == 0:
        return 0.0  # a constant representation shares nothing with anything
    return float(np.linalg.norm(yc.T @ xc) ** 2 / denominator)


def cka_matrix(
    student_hidden: Sequence[np.ndarray], teacher_hidden: Sequence[np.ndarray]
) -> np.ndarray:
    """(num student layers, num teacher layers) linear CKA between every pair of layers."""
    students = [_centred(x) for x in student_hidden]
    teachers = [_centred(y) for y in teacher_hidden]
    rows = {len(x) for x in students} | {len(y) for y in teachers}
    if len(rows) != 1:
        raise ValueError(f"every layer needs the same examples; got row counts {sorted(rows)}")
    s_norms = [np.linalg.norm(x.T @ x) for x in students]
    t_norms = [np.linalg.norm(y.T @ y) for y in teachers]
    matrix = np.zeros((len(students), len(teachers)))
    for i, (x, xn) in enumerate(zip(students, s_norms)):
        for j, (y, yn) in enumerate(zip(teachers, t_norms)):
            if xn > 0 and yn > 0:
                matrix[i, j] = np.linalg.norm(y.T @ x) ** 2 / (xn * yn)
    return matrix


def plot_cka(
    matrix: np.ndarray,
    path: str | pathlib.Path,
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> pathlib.Path:
    """Writes the CKA matrix as a heatmap PNG (rows: student layers, columns: teacher layers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * cols, 1.0 + 0.4 * rows), dpi=120)
    image = ax.imshow(matrix, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xlabel(f"{teacher_name} layer (0 = input of layer 1)")
    ax.set_ylabel(f"{student_name} layer")
    ax.set_title("linear CKA")
    for i in range(rows):
        for j in range(cols):
            colour = "black" if matrix[i, j] > 0.6 else "white"
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
