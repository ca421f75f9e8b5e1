"""The maths of each study: CKA (similarity, layerwise), stitching, STIR, inversion, mutual
information. Tensors and modules in, numbers out; never a config or a file."""
