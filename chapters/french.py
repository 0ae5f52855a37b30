"""The French edition's words: every English template a chapter passes to tr(), and its French.

`python chapters/NN_name.py --lang fr` looks each of a figure's titles, labels and captions up
here (common.Words). The keys are the chapters' English exactly, placeholders included ({n} is
filled in after the lookup, so it must appear on both sides). The French uses the terms of the
glossary in README.fr.md: « plongement » for embedding, « ordonnanceur » for scheduler,
« processus direct » for the forward process, « prompt » for the prompt.
"""

FRENCH = {
    # --- more than one chapter
    "latents": "latents",
    "value": "valeur",
    # --- 01_components
    "Stable Diffusion: three components run one after the other": "Stable Diffusion : trois composants exécutés "
    "l'un après l'autre",
    "prompt:": "prompt :",
    "token ids": "identifiants\ndes jetons",
    "Text encoder": "Encodeur de texte",
    "CLIP text transformer\n{ms:.0f} ms": "transformer de texte de CLIP\n{ms:.0f} ms",
    "token embeddings": "plongements des jetons",
    "Image information creator": "Créateur d'informations d'image",
    "UNet + scheduler, {steps} steps\n{s:.2f} s": "UNet + ordonnanceur, {steps} étapes\n{s:.2f} s",
    "latents after step 1": "latents après l'étape 1",
    "after step {n}": "après l'étape {n}",
    "(the 4 latent channels tiled 2 × 2)": "(les 4 canaux latents en mosaïque 2 × 2)",
    "Image decoder": "Décodeur d'image",
    "the autoencoder's\ndecoder, {ms:.0f} ms": "décodeur de\nl'autoencodeur\n{ms:.0f} ms",
    "image": "image",
    "(SD 1.5: {shape})": "(SD 1.5 : {shape})",
    # --- 02_text_encoder
    "<start>": "<début>",
    "<end>": "<fin>",
    "<pad>": "<remplissage>",
    "dimension of the token's vector (0 … {last})": "composante du vecteur du jeton (0 … {last})",
    "token (BPE piece and its id)": "jeton (morceau BPE et son identifiant)",
    '"{prompt}": one {width}-number vector per token (SD 1.5: {article})\n'
    "the first {shown} of the {tokens} rows the UNet receives": "« {prompt} » : un vecteur de {width} nombres "
    "par jeton (SD 1.5 : {article})\nles {shown} premières des {tokens} lignes que reçoit le UNet",
    "Cosine similarity of the prompts' end-of-text vectors\n(prompt / background)": "Similarité cosinus des vecteurs "
    "de fin de texte des prompts\n(prompt / fond)",
    "cosine similarity": "similarité cosinus",
    # --- 03_diffusion_steps
    "latents {latents} (SD 1.5: {sd_latents}), decoded to pictures {image} (SD 1.5: {sd_image})": "latents "
    "{latents} (SD 1.5 : {sd_latents}), décodés en images {image} (SD 1.5 : {sd_image})",
    "$x_t$: the latents\nthe UNet sees": "$x_t$ : les latents\nque voit le UNet",
    "x̂₀: the clean\npicture it predicts": "x̂₀ : l'image propre\nqu'il prédit",
    "ε̂: the predicted\nnoise, 4 channels": "ε̂ : le bruit\nprédit, 4 canaux",
    "the final picture:\nthe latents after step {k}, decoded": "l'image finale :\nles latents après "
    "l'étape {k}, décodés",
    "denoising step": "étape de débruitage",
    "RMS distance to\nthe final picture": "distance RMS à\nl'image finale",
    "the UNet predicts ε̂;\nx̂₀ is read from it\nat ᾱ = {a:.3f}": "le UNet prédit ε̂ ;\nx̂₀ s'en déduit\nà ᾱ = {a:.3f}",
    "latents or ε̂:\nthe 4 channels": "latents ou ε̂ :\nles 4 canaux",
    "decoded: the latents,\nor the x̂₀ of a prediction": "décodé : les latents,\nou le x̂₀ d'une prédiction",
    "step {k}\nt = {t}\nᾱ = {a:.3f}": "étape {k}\nt = {t}\nᾱ = {a:.3f}",
    "$x_t$ (what the UNet sees), decoded": "$x_t$ (ce que voit le UNet), décodé",
    "x̂₀ (the clean picture it predicts), decoded": "x̂₀ (l'image propre qu'il prédit), décodée",
    "← panels 2–5: the UNet without and with the text, guidance (inside predict_noise)": "← panneaux 2–5 : le "
    "UNet sans et avec le texte, le guidage (dans predict_noise)",
    "← panel 6": "← panneau 6",
    "The denoising loop that ran these steps, read from {file}, lines {first}–{last}": "La boucle de "
    "débruitage qui a exécuté ces étapes, lue dans {file}, lignes {first}–{last}",
    "the UNet predicts v,\nnot ε: ε̂ and x̂₀ are\nread from v at ᾱ = {a:.3f};\nguidance mixes v,\nthe same mix of ε̂": (
        "le UNet prédit v,\npas ε : ε̂ et x̂₀ se\ndéduisent de v à ᾱ = {a:.3f} ;\nle guidage mélange v,\nle même "
        "mélange pour ε̂"
    ),
    "1. $x_t$: the latents step {k}\nstarts from (t = {t})": "1. $x_t$ : les latents dont part\nl'étape {k} (t = {t})",
    '2. UNet without text\n(empty prompt "")': "2. UNet sans texte\n(prompt vide « »)",
    "3. UNet with the text": "3. UNet avec le texte",
    "4. what the text adds: 3 − 2,\nmagnified ×{zoom}": "4. ce qu'ajoute le texte : 3 − 2,\nagrandi ×{zoom}",
    "5. guidance:\n2 + g · (3 − 2), g = {g}": "5. guidage :\n2 + g · (3 − 2), g = {g}",
    "6. {call} ({scheduler}):\nthe latents after step {k}": "6. {call} ({scheduler}) :\nles latents après l'étape {k}",
    "value (latents and ε̂)": "valeur (latents et ε̂)",
    "ε̂ value": "valeur de ε̂",
    '"{prompt}": {count} steps of {scheduler}, guidance {g}, random latents of seed {seed}': "« {prompt} » : "
    "{count} étapes de {scheduler}, guidage {g}, latents aléatoires de graine {seed}",
    "each column: $x_t$ = √ᾱ · x̂₀ + √(1 − ᾱ) · ε̂": "chaque colonne : $x_t$ = √ᾱ · x̂₀ + √(1 − ᾱ) · ε̂",
    "the cosine of ε̂ with the random latents $x_T$ the loop started from: {low:.3f} to {high:.3f}": "le cosinus de ε̂ "
    "avec les latents aléatoires $x_T$ dont la boucle est partie : de {low:.3f} à {high:.3f}",
    "One denoising step taken apart: step {k} of {count}": "Une étape de débruitage démontée : étape {k} sur {count}",
    # --- 04_training_examples
    "picture + noise\n(pixels, {ours};\nSD 1.5: {sd15})": "image + bruit\n(pixels, {ours} ;\nSD 1.5 : {sd15})",
    "latents + noise\n(what the UNet sees)": "latents + bruit\n(ce que voit le UNet)",
    "noise to find\n(the truth)": "bruit à trouver\n(la vérité)",
    "noise the UNet\npredicts": "bruit que le UNet\nprédit",
    "prediction error\n(predicted − truth)": "erreur de prédiction\n(prédit − vérité)",
    "training timestep t": "pas de temps d'entraînement t",
    "weight in x_t": "poids dans x_t",
    "The noise schedule": "Le calendrier du bruit",
    "training timestep t (how much noise was added)": "pas de temps d'entraînement t (la quantité de bruit ajoutée)",
    "mean squared error of the predicted noise (log scale)": "erreur quadratique moyenne\n"
    "du bruit prédit (échelle log)",
    "The trained noise predictor's error ({n} pictures per point)": "L'erreur du prédicteur de bruit entraîné "
    "({n} images par point)",
    "the picture:\nx₀ decoded": "l'image :\nx₀ décodé",
    "noise ε": "bruit ε",
    "noisy latents\nx_t = √ᾱ·x₀ + √(1 − ᾱ)·ε\n(the UNet's input)": "latents bruités\nx_t = √ᾱ·x₀ + √(1 − ᾱ)·ε\n"
    "(l'entrée du UNet)",
    "target\nv = √ᾱ·ε − √(1 − ᾱ)·x₀": "cible\nv = √ᾱ·ε − √(1 − ᾱ)·x₀",
    "the trained UNet's\noutput v̂": "la sortie v̂\ndu UNet entraîné",
    "full caption:": "légende complète :",
    "short caption:": "légende courte :",
    "empty caption:": "légende vide :",
    "full caption ({n})": "légende complète ({n})",
    "short caption ({n})": "légende courte ({n})",
    "empty caption ({n})": "légende vide ({n})",
    "the example's timestep t": "le pas de temps t de l'exemple",
    "its loss: mean of (v̂ − v)²": "sa perte : moyenne de (v̂ − v)²",
    "All {n} examples of the batch: what one training step averages": "Les {n} exemples du lot : ce que moyenne "
    "une étape d'entraînement",
    "and the noise the trained UNet finds in them (latents {ours}, SD 1.5: {sd15}; the 4 channels tiled 2 × 2)": (
        "et le bruit qu'y trouve le UNet entraîné (latents {ours}, SD 1.5 : {sd15} ; les 4 canaux en mosaïque 2 × 2)"
    ),
    "sqrt(ᾱ_t): how much picture is left": "sqrt(ᾱ_t) : ce qui reste de l'image",
    "sqrt(1 − ᾱ_t): how much noise is mixed in": "sqrt(1 − ᾱ_t) : la part de bruit mélangée",
    "levels 0 … 4": "niveaux 0 … 4",
    "exactly 0 at the last level\n(pure noise: nothing to guess)": "exactement 0 au dernier niveau\n(bruit pur : "
    "rien à deviner)",
    "loss {loss:.3f}": "perte {loss:.3f}",
    "{count} of its {n} examples; latents {ours} (SD 1.5: {sd15}), the 4 channels tiled 2 × 2": "{count} de ses "
    "{n} exemples ; latents {ours} (SD 1.5 : {sd15}), les 4 canaux en mosaïque 2 × 2",
    "the batch's loss (the mean): {loss:.4f}": "la perte du lot (la moyenne) : {loss:.4f}",
    "sqrt(ᾱ) = {picture:.2f}, noise × {noise:.2f}": "sqrt(ᾱ) = {picture:.2f}, bruit × {noise:.2f}",
    'Training examples from one picture ("{caption}") at noise levels 0 … 4,': "Exemples d'entraînement tirés "
    "d'une image (« {caption} ») aux niveaux de bruit 0 … 4,",
    "One training batch, made by {function} in {script}, which {caller} calls at every step": "Un lot "
    "d'entraînement, fait par {function} dans {script}, que {caller} appelle à chaque étape",
    "level {level}: t = {t}": "niveau {level} : t = {t}",
    "t = {t}, √ᾱ = {root:.2f}": "t = {t}, √ᾱ = {root:.2f}",
    # --- 05_latent_space
    "picture": "image",
    "latent channel {c}": "canal latent {c}",
    "decoded": "décodée",
    "|difference|\n0 … 0.25": "|différence|\n0 … 0,25",
    "PSNR {score:.1f} dB": "PSNR {score:.1f} dB",
    "latent value": "valeur latente",
    "The autoencoder: a {image} picture becomes {latents} latents ({compression:.0f}× fewer numbers; "
    "SD 1.5: {article_image} → {article_latents}); the decoder paints it back": "L'autoencodeur : une image "
    "{image} devient des latents {latents} ({compression:.0f}× moins de nombres ; SD 1.5 : {article_image} → "
    "{article_latents}) ; le décodeur la repeint",
    "on latents": "sur les latents",
    "on pixels": "sur les pixels",
    "embedded model": "modèle embarqué",
    "{latent}² latents / {pixel}² pixels": "latents {latent}² / pixels {pixel}²",
    "GFLOP per step with guidance (log scale)": "GFLOP par étape avec guidage (échelle log)",
    "Work of one UNet step": "Travail d'une étape du UNet",
    "{v:.2g} s": "{v:.2g} s",
    "{h:.0f} h": "{h:.0f} h",
    "embedded model\n(both timed)": "modèle embarqué\n(les deux chronométrés)",
    "SD 1.5\n(its FLOPs at {rate:.0f} GFLOP/s, this CPU's rate)": "SD 1.5\n(ses FLOP à {rate:.0f} GFLOP/s, "
    "le débit de ce CPU)",
    "seconds per step (log scale)": "secondes par étape (échelle log)",
    "Time of one UNet step on this CPU": "Durée d'une étape du UNet sur ce CPU",
    "The speed boost: the same UNet on latents and on the picture's pixels (3 channels in and out)": "Le gain de "
    "vitesse : le même UNet sur les latents et sur les pixels de l'image (3 canaux en entrée et en sortie)",
    # --- 06_clip_training
    "before training: the seeded random towers of {function}": "avant l'entraînement : les tours aléatoires "
    "(graine fixée) de {function}",
    "after training: the embedded model's towers ({module})": "après l'entraînement : les tours du modèle "
    "embarqué ({module})",
    "cosine similarity (both panels)": "similarité cosinus (les deux panneaux)",
    "P(caption | picture) (both panels)": "P(légende | image) (les deux panneaux)",
    "picture → image tower → {width} numbers; caption → {ours} token embeddings (SD 1.5: {sd15}) → the end "
    "token's vector → {width} numbers": "image → tour d'images → {width} nombres ; légende → plongements des "
    "jetons {ours} (SD 1.5 : {sd15}) → le vecteur du jeton de fin → {width} nombres",
    "cosine similarity: picture (row) × caption (column)": "similarité cosinus : image (ligne) × légende (colonne)",
    "loss picture → caption {forward:.3f}, caption → picture {backward:.3f}": "perte image → légende "
    "{forward:.3f}, légende → image {backward:.3f}",
    "P(caption | picture): softmax of each row × {scale:.1f}": "P(légende | image) : softmax de chaque ligne × "
    "{scale:.1f}",
    "training pulls the matching pairs (the diagonal) together and pushes the negatives apart; a blind guess has "
    "loss ln {n} = {chance:.2f}": "l'entraînement rapproche les paires assorties (la diagonale) et éloigne les "
    "négatifs ; deviner au hasard donne une perte de ln {n} = {chance:.2f}",
    "How CLIP is trained: the same {n} pictures and captions before and after contrastive training": "Comment "
    "CLIP est entraîné : les mêmes {n} images et légendes avant et après l'entraînement contrastif",
    # --- 07_unet
    'Cross-attention: where each token of "{prompt}" is looked at ({calls} UNet calls, all their layers '
    "averaged; one scale for every map)": "Attention croisée : où chaque jeton de « {prompt} » est regardé "
    "({calls} appels du UNet, toutes leurs couches moyennées ; une seule échelle pour toutes les cartes)",
    "ResNet": "ResNet",
    "Attn": "Attn",
    "down": "desc.",
    "up": "mont.",
    "conv": "conv",
    "dimension (0 … {last}: cosines, then sines)": "composante (0 … {last} : cosinus, puis sinus)",
    "timestep t (rows: 8 timesteps averaged)": "pas de temps t (lignes : 8 pas de temps moyennés)",
    "Sinusoidal time embedding, before the UNet's MLP": "Plongement sinusoïdal du pas de temps, avant le MLP du UNet",
    "dimension {dimension}: period {period:.0f} timesteps": "composante {dimension} : période de {period:.0f} "
    "pas de temps",
    "level {n}": "niveau {n}",
    "timestep t": "pas de temps t",
    "Four of the cosines\n(fast ones tell near timesteps apart, slow ones far ones)": "Quatre des cosinus (les rapides "
    "séparent\nles pas de temps proches, les lents les lointains)",
    "without text\n(empty prompt)": "sans texte\n(prompt vide)",
    "with text": "avec texte",
    "The same starting noise, denoised without and with the text": "Le même bruit de départ, débruité sans puis "
    "avec le texte",
    "time embedding\n(t = {t})": "plongement temporel\n(t = {t})",
    "token\nembeddings": "plongements\ndes jetons",
    "time embedding": "plongement temporel",
    "Shapes: this model and SD 1.5": "Formes : ce modèle et SD 1.5",
    "ResNet blocks": "blocs ResNet",
    "skip connections": "connexions de saut",
    "attention blocks": "blocs d'attention",
    "cross-attention layers": "attentions croisées",
    "Blocks, counted from the modules": "Blocs, comptés dans les modules",
    "The UNet with text ({model}, one call watched): the data flows left to right": "Le UNet avec texte ({model}, "
    "un appel observé) : les données vont de gauche à droite",
    "The UNet without text ({model}, one call watched): the data flows left to right": "Le UNet sans texte "
    "({model}, un appel observé) : les données vont de gauche à droite",
    "embedding value": "valeur du plongement",
    "seed {seed}": "graine {seed}",
    "<end> + padding": "<fin> + remplissage",
    "attention weight\n(one log scale)": "poids d'attention\n(une échelle log)",
    "predicted\nnoise": "bruit\nprédit",
    "latents, predicted noise": "latents, bruit prédit",
    "ResNet block": "bloc ResNet",
    "down: stride-2 convolution; up: nearest ×2, convolution": "desc. : convolution de pas 2 ; mont. : plus "
    "proche voisin ×2, convolution",
    "skip connection: concatenated to the layer's input": "connexion de saut : concaténée à l'entrée de la couche",
    "time embedding, handed to every ResNet block": "plongement temporel, donné à chaque bloc ResNet",
    "{share:.0%} of attention": "{share:.0%} de l'attention",
    "Attn: attention block (self-, then cross-attention)": "Attn : bloc d'attention (auto-attention, puis "
    "attention croisée)",
    "token embeddings, handed to every attention block, to no ResNet block": "plongements des jetons, donnés à "
    "chaque bloc d'attention, à aucun bloc ResNet",
    # --- 08_guidance
    "guidance {scale}": "guidage {scale}",
    "negative prompt:\n(none)": "prompt négatif :\n(aucun)",
    'negative prompt:\n"{negative}"': "prompt négatif :\n« {negative} »",
    '"{prompt}", seed {seed}, {steps} steps': "« {prompt} », graine {seed}, {steps} étapes",
    'negative: "{name}"': "négatif : « {name} »",
    "no negative prompt": "pas de prompt négatif",
    "guidance scale s": "échelle de guidage s",
    "RMS change from the image at s = 1": "écart RMS à l'image à s = 1",
    "The change grows with guidance": "L'écart grandit avec le guidage",
    # --- 09_img2img
    "input picture": "image d'entrée",
    "strength {strength}\n{count} of {steps} steps": "force {strength}\n{count} étapes sur {steps}",
    'Input: "{source}"; prompt: "{prompt}"': "Entrée : « {source} » ; prompt : « {prompt} »",
    "strength": "force",
    "RMS distance from the input": "distance RMS à l'entrée",
    "Higher strength, further from the input": "Plus de force, plus loin de l'entrée",
    # --- 10_sdxl
    "text\nencoder": "encodeur\nde texte",
    "text\nencoder 2": "encodeur\nde texte 2",
    "parameters (millions)": "paramètres (millions)",
    "Parameters per component": "Paramètres par composant",
    "level {i}": "niveau {i}",
    "transformer layers after each ResNet": "couches de transformer\naprès chaque ResNet",
    "Attention moves to the small latents\n(0: no attention; SDXL has 3 levels)": "L'attention passe aux petits "
    "latents\n(0 : pas d'attention ; SDXL a 3 niveaux)",
    "text vectors": "vecteurs du texte",
    "added inputs": "entrées ajoutées",
    "none": "aucune",
    "pooled 1280 + 6 time ids": "résumé 1280 + 6 time ids",
    "pixels": "pixels",
    "VAE scaling": "facteur d'échelle du VAE",
    "What the UNet reads and writes": "Ce que le UNet lit et écrit",
    "SD 1.5 and SDXL base 1.0, counted from their configurations": "SD 1.5 et SDXL base 1.0, comptés d'après "
    "leurs configurations",
    "token (77)": "jeton (77)",
    "vector component": "composante du vecteur",
    "Text vectors: encoder 1\n(rows 0–{last}) over encoder 2": "Vecteurs du texte : encodeur 1\n(lignes 0–{last}) "
    "au-dessus de l'encodeur 2",
    "original h": "h d'origine",
    "original w": "l d'origine",
    "crop top": "recadrage haut",
    "crop left": "recadrage gauche",
    "target h": "h visée",
    "target w": "l visée",
    "embedding component (cos | sin)": "composante du plongement (cos | sin)",
    "Six time ids, each as a sinusoid": "Six time ids, chacun en sinusoïde",
    "crop top (pixels)": "recadrage en haut (pixels)",
    "relative change of the added embedding": "variation relative du plongement ajouté",
    "Asking for a crop changes what\nevery ResNet block reads": "Un recadrage demandé change\nce que lit "
    "chaque bloc ResNet",
    'SDXL\'s conditioning on a small random SDXL-shaped model, prompt "{prompt}"': "Le conditionnement de SDXL "
    "sur un petit modèle aléatoire de forme SDXL, prompt « {prompt} »",
    # --- 11_samplers
    "{count} steps": "{count} étapes",
    "the model's zero-SNR\nschedule": "le calendrier à SNR nul\ndu modèle",
    "refused:": "refusé :",
    "{seconds:.2f} s, distance {distance:.3f}": "{seconds:.2f} s, distance {distance:.3f}",
    "(the model's)": "(celui du modèle)",
    '"{prompt}", seed {seed}, guidance {guidance}\ndistance: RMS to the 100-step {own} picture': "« {prompt} », "
    "graine {seed}, guidage {guidance}\ndistance : RMS à l'image {own} en 100 étapes",
    "denoising steps (log scale)": "étapes de débruitage (échelle log)",
    "RMS distance to the 100-step picture (pixels in [0, 1])": "distance RMS à l'image en 100 étapes "
    "(pixels dans [0, 1])",
    "Distance to the 100-step picture (DDIM and Euler coincide, so do DDPM and Euler a)": "Distance à l'image en "
    "100 étapes (DDIM et Euler coïncident, DDPM et Euler a aussi)",
    "1. prompt alone\n(s = 1)": "1. le prompt seul\n(s = 1)",
    '2. guided away from ""\n(s = {scale:g})': "2. guidé loin de « »\n(s = {scale:g})",
    "3. guided along the direction\n(s = {scale:g})": "3. guidé le long de la direction\n(s = {scale:g})",
    '4. final, negative ""': "4. finale, négatif « »",
    "5. final, negative blue": "5. finale, négatif bleu",
    'x̂₀ at step {step} of {steps} (t = {t}), then the finished pictures; negative: "{negative}"': "x̂₀ à l'étape "
    "{step} sur {steps} (t = {t}), puis les images finies ; négatif : « {negative} »",
    "red": "rouge",
    "blue": "bleu",
    "picture (left to right)": "image (de gauche à droite)",
    "mean over the picture (0..1)": "moyenne sur l'image (0..1)",
    "Red and blue in each picture": "Rouge et bleu dans chaque image",
}
