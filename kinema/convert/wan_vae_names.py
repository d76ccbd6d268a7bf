"""Names shared by the original Wan 2.1 and 2.2 VAE releases -> kinema's (= diffusers') VideoVAE names."""

RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2.": "conv1.", "residual.3.gamma": "norm2.gamma",
            "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}
TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv.", "encoder.conv1.": "encoder.conv_in.",
       "decoder.conv1.": "decoder.conv_in.", "encoder.head.0.": "encoder.norm_out.",
       "encoder.head.2.": "encoder.conv_out.", "decoder.head.0.": "decoder.norm_out.",
       "decoder.head.2.": "decoder.conv_out."}
