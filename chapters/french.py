"""The French edition's words: every English template a chapter passes to tr(), and its French.

`python chapters/NN_name.py --lang fr` looks each of a figure's titles, labels and captions up
here (common.Words). The keys are the chapters' English exactly, placeholders included ({n} is
filled in after the lookup, so it must appear on both sides). The French uses the terms of the
glossary in README.fr.md: « plongement » for embedding, « ordonnanceur » for scheduler,
« processus direct » for the forward process, « prompt » for the prompt.
"""

FRENCH = {
    # --- more than one chapter
    # --- 01_components
    # --- 02_text_encoder
    # --- 03_diffusion_steps
    # --- 04_training_examples
    # --- 05_latent_space
    # --- 06_clip_training
    # --- 07_unet
    # --- 08_guidance
    # --- 09_img2img
    # --- 10_sdxl
    # --- 11_samplers
}
