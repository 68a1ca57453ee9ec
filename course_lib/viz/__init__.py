"""Figures drawn by code for the book and the exercises (matplotlib only), one concept a module.

* :mod:`~course_lib.viz.plots` - tensors as pictures, training curves, rooflines, the sliding
  window, conv volumes, sampled-pixel maps (also side by side to scale), the logo.
* :mod:`~course_lib.viz.im2col` - convolution as one matrix multiply (chapter 1).
* :mod:`~course_lib.viz.separable_shapes` - depthwise, then pointwise, with tensor shapes (ch. 4).
* :mod:`~course_lib.viz.inception_family` - Inception -> grouped conv -> extreme Inception (ch. 5).
* :mod:`~course_lib.viz.aspp_diagram` - DeepLab's atrous spatial pyramid pooling (chapter 6).
* :mod:`~course_lib.viz.photos` - filters on real photographs: edges, per-channel edges, the
  pixels a dilated stack reads (chapters 1, 3, 6).
* :mod:`~course_lib.viz.mobilenet_shapes` - the MobileNet block and the network's stages (ch. 7).

Shared drawing primitives and the page-readability rule live in :mod:`~course_lib.viz._draw`.
"""
from course_lib.viz.aspp_diagram import aspp_layout, draw_aspp
from course_lib.viz.im2col import draw_im2col, unfolded_indices
from course_lib.viz.inception_family import draw_inception_family, inception_family_shapes
from course_lib.viz.mobilenet_shapes import (draw_mobilenet_block, draw_network_shapes,
                                             layer_names, stage_shapes, stages)
from course_lib.viz.photos import (channel_edges, show_channel_edges, show_filter_responses,
                                   show_reads_on_photo)
from course_lib.viz.plots import (draw_conv_volumes, draw_logo, draw_roofline_panels,
                                  draw_sampled_pixels, draw_sliding_window, plot_accuracy_curves,
                                  plot_history, plot_roofline, show_feature_maps, show_image,
                                  show_masks, show_sampled_pixels_to_scale)
from course_lib.viz.separable_shapes import draw_separable_shapes, separable_shapes
