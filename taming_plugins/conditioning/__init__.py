"""Built-in conditioning: how side information becomes the prior's prefix tokens.

Design
------
A conditioner (kind ``conditioner``, a :class:`taming_core.Conditioner`) turns side
information into *local* condition ids in ``[0, vocab_size)``:

* ``sos`` -- unconditional training: one start-of-sequence token per sample (B×1).
* ``class_label`` -- a class id becomes one token (B×1); an extra *null* id stands for
  "no class" so classifier-free guidance can train an unconditional branch.
* ``spatial`` -- a second, frozen tokenizer (any registered :class:`~taming_core.Tokenizer`
  or an original taming cond-stage model) encodes a depth or segmentation map into a
  B×h×w grid of condition tokens spatially aligned with the image grid: the paper's
  conditional VQGAN.
* ``coordinates`` -- for training on crops of large images: the crop's normalised
  coordinate map, area-downsampled and quantized into tokens (the original CoordStage);
  :class:`~taming_plugins.conditioning.coordinates.CoordinateCrops` yields
  ``(crop, coordinate map)`` pairs from large images.
* ``compose`` -- several conditioners side by side; their ids are stacked into one
  vocabulary and their flattened tokens concatenated.

Where condition ids land in the prior's vocabulary is decided by a
:class:`~taming_plugins.conditioning.layout.VocabLayout`: the prior sees the sequence
``[cond ids + offset (flattened row-major), image ids]``. The original
Net2NetTransformer concatenates raw ids (``offset=0``, the two vocabularies overlap and
positions disambiguate them); its unconditional SOS token is ``sos_token`` (``n_embed``
in the reference configs), i.e. the ``sos`` conditioner with ``offset=n_embed``.

Training-time transforms (:mod:`~taming_plugins.conditioning.transforms`): ``pkeep``
random replacement of input image tokens, and classifier-free-guidance condition dropout.
"""
