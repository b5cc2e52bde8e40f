"""notebooks/knn_neighbours.ipynb: its code cells, run in order on a tiny workdir, find each
query's most similar images and draw the grid, which is written as a PNG and read back."""

import json
import os

import matplotlib
import matplotlib.image
import numpy as np

from test_export import checkpointed_workdir  # noqa: F401  (a fixture: a tiny checkpoint)
from support import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "knn_neighbours.ipynb")


def code_cells(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        notebook = json.load(f)
    assert notebook["nbformat"] == 4
    return ["".join(cell["source"]) for cell in notebook["cells"]
            if cell["cell_type"] == "code"]


def test_the_notebook_draws_each_querys_nearest_neighbours(checkpointed_workdir,  # noqa: F811
                                                          tmp_path, monkeypatch):
    figure = tmp_path / "neighbours.png"
    for name, value in {"KNN_WORKDIR": checkpointed_workdir, "KNN_FIGURE": str(figure),
                        "KNN_QUERIES": "3", "KNN_K": "4"}.items():
        monkeypatch.setenv(name, value)
    matplotlib.use("Agg")
    namespace: dict = {}
    for source in code_cells(NOTEBOOK):
        exec(compile(source, NOTEBOOK, "exec"), namespace)  # noqa: S102  (the notebook's code)

    features, queries, neighbours = (namespace[name] for name in
                                     ("features", "queries", "neighbours"))
    assert len(features) == len(namespace["images"]) == 12  # The synthetic test split.
    assert neighbours.shape == (3, 4)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for query, found in zip(queries, neighbours):
        assert query not in found
        cosine = unit @ unit[query]
        others = np.setdiff1d(np.arange(len(unit)), [query, *found])
        assert cosine[found].min() >= cosine[others].max() - 1e-6

    image = matplotlib.image.imread(str(figure))
    height, width = image.shape[:2]
    assert abs(width / height - (1.5 * 5) / (1.7 * 3)) < 0.05  # 3 rows of query + 4.
    assert np.std(image[..., :3]) > 0.05  # Images and titles are drawn.
