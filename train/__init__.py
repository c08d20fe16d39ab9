"""Training: datasets (pix2pixHD and Cityscapes layouts, synthetic scenes), multi-scale
discriminators, the GAN / feature-matching / VGG losses, and the two-stage trainer."""
