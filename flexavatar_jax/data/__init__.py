"""Training data: the synthetic data engine (identities, appearance, motion and cameras), the VHAP
sequence format, grain pipelines, expression balancing, media I/O and the dataset writer."""
