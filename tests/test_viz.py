"""course_lib.viz draws what it is given (checked on the artists, not by eye)."""
import matplotlib
import matplotlib.text

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


# --- diagrams (course_lib.viz submodules): labels come from the modules, checked here against
# independent arithmetic; every diagram must stay readable on the page -------------------------

from matplotlib.patches import Circle  # noqa: E402

from course_lib import atrous, mobilenet  # noqa: E402
from course_lib.viz import _draw  # noqa: E402


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.figure.findobj(matplotlib.text.Text))


def assert_readable(fig):
    """At most MAX_WIDTH_IN wide, and its smallest text at least 9 screen pixels high once the
    figure is scaled to the book's text column."""
    assert fig.get_size_inches()[0] <= _draw.MAX_WIDTH_IN
    assert _draw.smallest_font_px(fig) >= 9, _draw.smallest_font_px(fig)


def test_im2col_indices_match_hand_unfolding():
    c_in, size, k = 2, 4, 3
    cols = viz.unfolded_indices(c_in, size, k)
    out = size - k + 1
    assert cols.shape == (c_in * k * k, out * out)
    for c in range(c_in):
        for u in range(k):
            for w in range(k):
                for i in range(out):
                    for j in range(out):
                        # pixel (c, i + u, j + w), numbered from 1 channel by channel, row by row
                        expected = c * size * size + (i + u) * size + (j + w) + 1
                        assert cols[c * k * k + u * k + w, i * out + j] == expected
    padded = viz.unfolded_indices(1, 3, 3, padding=1)
    assert padded[0, 0] == 0 and padded[4, 0] == 1  # top-left tap reads padding, centre pixel 1


def test_im2col_diagram_draws_every_number_and_the_product_shapes():
    ax = viz.draw_im2col(in_channels=2, size=4, kernel_size=3, out_channels=2, highlight=1)
    texts = _texts(ax)
    assert "18 x 4" in texts and "2 x 18" in texts and "2 x 2 x 2" in texts
    # 32 input numbers + 18 x 4 unfolded entries, each its own text
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert len(numbers) == 32 + 18 * 4
    assert_readable(ax.figure)
    with pytest.raises(ValueError, match="highlight"):
        viz.draw_im2col(highlight=4)
    plt.close("all")


def test_separable_shapes_follow_the_formulas():
    shapes = viz.separable_shapes(3, 16, 3, size=32, stride=2)
    assert shapes == {"input": (1, 3, 32, 32), "depthwise weight": (3, 1, 3, 3),
                      "depthwise output": (1, 3, 16, 16), "pointwise weight": (16, 3, 1, 1),
                      "output": (1, 16, 16, 16)}
    ax = viz.draw_separable_shapes(3, 16, 3, size=32, stride=2)
    texts = _texts(ax)
    for shape in shapes.values():
        assert str(shape) in texts
    assert_readable(ax.figure)
    plt.close("all")


def test_inception_family_shapes_and_groups():
    c, t, s = 32, 3, 4
    shapes = viz.inception_family_shapes(c, t, s)
    assert shapes["inception"] == {"towers": t, "1x1": (s, c, 1, 1), "3x3": (s, s, 3, 3),
                                   "out": t * s}
    assert shapes["grouped"] == {"1x1": (t * s, c, 1, 1), "3x3": (t * s, s, 3, 3), "groups": t,
                                 "out": t * s}
    assert shapes["extreme"] == {"1x1": (t * s, c, 1, 1), "3x3": (t * s, 1, 3, 3),
                                 "groups": t * s, "out": t * s}
    ax = viz.draw_inception_family(c, t, s)
    texts = _texts(ax)
    assert "groups = 3" in texts and "groups = 12" in texts
    assert_readable(ax.figure)
    plt.close("all")


def test_aspp_diagram_shapes_and_taps_on_the_map():
    with torch.device("meta"):  # shapes only: no 15 M weights to initialise
        aspp = atrous.ASPP(2048, 256, output_stride=16)
    layout = viz.aspp_layout(aspp, 33)
    rates = [rate for _, rate, _ in layout["branches"] if rate]
    assert rates == [6, 12, 18]
    assert all(shape == (1, 256, 33, 33) for _, _, shape in layout["branches"])
    assert layout["concat"] == (1, 5 * 256, 33, 33) and layout["output"] == (1, 256, 33, 33)
    ax = viz.draw_aspp(size=33)
    taps = [p for p in ax.patches if isinstance(p, Circle)]
    hollow = [p for p in taps if p.get_facecolor()[:3] == (1.0, 1.0, 1.0)]
    # Centre pixel 16 of 33: offsets +-6 and +-12 stay on the map, +-18 all leave it (8 taps).
    assert len(taps) == 27 and len(hollow) == 8
    assert_readable(ax.figure)
    plt.close("all")


def test_mobilenet_block_and_stage_shapes():
    with torch.device("meta"):
        block = mobilenet.MobileNetV1()._block(64, 128, 1)
    assert viz.layer_names(block) == [
        "3x3 depthwise conv, 64 ch.", "BatchNorm", "ReLU", "1x1 conv, 64 → 128 ch.", "BatchNorm",
        "ReLU"]
    # The paper's Table 1 (input-size column, with the stride-1 erratum for the last block).
    expected = ([(3, 224), (32, 112), (64, 112), (128, 56), (128, 56), (256, 28), (256, 28)]
                + [(512, 14)] * 6 + [(1024, 7), (1024, 7), (1024, 1), (1000, 1)])
    assert [(c, h) for _, (c, h, w) in viz.stage_shapes()] == expected
    assert [count for _, _, count in viz.stages()] == [1, 1, 1, 2, 2, 6, 2, 1, 1]
    half = viz.stage_shapes(alpha=0.5, resolution=128)
    assert half[1][1] == (16, 64, 64) and half[-2][1] == (512, 1, 1)
    ax = viz.draw_network_shapes()
    assert "C = 1024" in _texts(ax) and "7 x 7" in _texts(ax)
    assert_readable(ax.figure)
    assert_readable(viz.draw_mobilenet_block().figure)
    plt.close("all")


def test_gridding_panels_are_drawn_to_scale():
    maps = {f"rates {r}": atrous.sampled_pixels([(3, 1, x) for x in r])
            for r in ((1, 1, 1), (2, 2, 2), (1, 2, 5))}
    fig = viz.show_sampled_pixels_to_scale(maps)
    fig.canvas.draw()
    pixel_widths = [ax.get_window_extent().width / m.shape[1]
                    for ax, m in zip(fig.axes, maps.values())]
    assert max(pixel_widths) / min(pixel_widths) < 1.02, pixel_widths
    assert_readable(fig)
    plt.close(fig)


# --- filters on real photographs (course_lib.viz.photos) ----------------------------------------

def test_filter_responses_are_the_convolutions_of_the_photo():
    image = torch.rand(1, 20, 24)
    kernels = [viz.photos.SOBEL_X, viz.photos.SOBEL_X.T]
    fig = viz.show_filter_responses(image, kernels, ["x", "y"])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["input (1 x 20 x 24)", "x", "y"]
    # Independent truth: scipy's correlation with a nearest (replicated) border.
    from scipy.ndimage import correlate
    for ax, k in zip(panels[1:], kernels):
        expected = abs(correlate(image[0].double().numpy(), k.double().numpy(), mode="nearest"))
        assert abs(ax.images[0].get_array().filled() - expected).max() < 1e-5
    with pytest.raises(ValueError, match="one title per kernel"):
        viz.show_filter_responses(image, kernels, ["x"])
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        viz.show_filter_responses(torch.rand(3, 8, 8), kernels, ["x", "y"])
    plt.close("all")


def test_channel_edges_see_each_colour_alone():
    photo = torch.zeros(3, 16, 16)
    photo[0, :, 8:] = 1.0   # a vertical edge in red only
    photo[2, 8:, :] = 0.5   # a horizontal edge in blue only
    edges = viz.channel_edges(photo)
    assert edges.shape == (3, 16, 16) and edges.max() == 1.0
    assert edges[1].abs().max() == 0  # green is flat: a depthwise filter sees no edge there
    assert edges[0, :, 7:9].min() > 0 and edges[0, :, :6].abs().max() == 0
    assert edges[2, 7:9, :].min() > 0 and edges[2, :6, :].abs().max() == 0
    fig = viz.show_channel_edges(photo)
    assert len([ax for ax in fig.axes if ax.images]) == 5
    plt.close(fig)


def test_reads_on_photo_mark_the_sampled_pixels():
    from course_lib import atrous

    photo = torch.full((1, 30, 30), 0.5)
    stacks = {"rates (2, 2, 2)": (2, 2, 2), "rates (1, 2, 5)": (1, 2, 5)}
    fig = viz.show_reads_on_photo(photo, stacks, centre=(15, 15))
    for ax, (name, rates) in zip([ax for ax in fig.axes if ax.images], stacks.items()):
        counts = atrous.sampled_pixels([(3, 1, r) for r in rates])
        shown = torch.as_tensor(ax.images[0].get_array())
        red = (shown[..., 0] == 0.9) & (shown[..., 1] == 0.1)
        assert int(red.sum()) == int((counts == 0).sum())
        assert ax.get_title() == f"{name}: {int((counts > 0).sum())} of {counts.numel()} read"
    with pytest.raises(ValueError, match="move the centre inwards"):
        viz.show_reads_on_photo(photo, {"(1, 2, 5)": (1, 2, 5)}, centre=(3, 15))
    plt.close("all")


def test_accuracy_curves_one_line_per_seed_one_legend_entry_per_network():
    curves = {"a": [[0.1, 0.5, 0.9], [0.2, 0.6, 0.8]], "b": [[0.3, 0.4, 0.5]]}
    ax = viz.plot_accuracy_curves(curves)
    assert len(ax.lines) == 3
    assert list(ax.lines[1].get_ydata()) == pytest.approx([20, 60, 80])
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    with pytest.raises(ValueError, match="per-seed"):
        viz.plot_accuracy_curves({"a": []})
    plt.close("all")
