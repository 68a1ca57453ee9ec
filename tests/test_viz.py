"""course_lib.viz draws what it is given (checked on the artists, not by eye)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from course_lib import viz  # noqa: E402


def test_feature_maps_one_panel_per_channel():
    fig = viz.show_feature_maps(torch.rand(5, 6, 7), ncols=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5 and panels[0].images[0].get_array().shape == (6, 7)
    plt.close(fig)


def test_sliding_window_highlights_k_squared_cells():
    ax = viz.draw_sliding_window(6, 3, position=(1, 1), stride=2, padding=1, dilation=1)
    highlighted = [p for p in ax.patches if p.get_facecolor()[:3] != (1.0, 1.0, 1.0)]
    assert len(ax.patches) == 8 * 8 + 9 and len(highlighted) == 9
    with pytest.raises(ValueError, match="outside"):
        viz.draw_sliding_window(4, 3, position=(3, 3))
    plt.close("all")


def test_conv_volumes_labels_the_shapes():
    ax = viz.draw_conv_volumes(3, 32, 16, 3, stride=2, padding=1)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "3x32x32" in texts and "16x16x16" in texts and "3x3x3" in texts
    plt.close("all")


def test_bad_image():
    with pytest.raises(ValueError, match="an image must be"):
        viz.show_image(torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        viz.show_feature_maps([[1.0]])
