"""stn: spatial-transformer and attention-crop models."""
