"""Sample: ddpm-sample on a checkpoint (grid, sampling GIF, noise GIF) and a one-per-click generator."""

import streamlit as st
from PIL import Image

from ddpm.dashboard import launch, sampling
from ddpm.dashboard.paths import inside, relative
from ddpm.dashboard.runs import checkpoint_choices
from ddpm.dashboard.ui import display_path, outputs_root, show_error
from ddpm.errors import USER_ERRORS

NOUNS = {"cryptopunks": "punk", "mnist": "digit", "cats": "cat"}

root = outputs_root()
st.title("Sample")
choices = checkpoint_choices(root)  # the most trained run first, its best.pt before last.pt
if not choices:
    st.info(f"No checkpoints under {display_path(root)} yet: train a model first.")
    st.stop()
labels = {relative(root, c.path): c.label(root) for c in choices}
if st.session_state.get("ckpt") not in labels:  # first view, or that file went away (a run keeps its newest few)
    st.session_state.pop("ckpt", None)
ckpt = st.selectbox("Checkpoint", list(labels), format_func=lambda k: labels.get(k, k), key="ckpt", help="the most trained first")
c1, c2, c3, c4 = st.columns(4)
samplers = launch.group_options("sampler")
sampler = c1.selectbox("Sampler", samplers, index=samplers.index("sde_dpm_solver") if "sde_dpm_solver" in samplers else 0, key="sampler")
steps = c2.number_input("Steps (0: the sampler's default)", min_value=0, max_value=10000, value=20, key="steps")
seed = c3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="seed")
count = c4.number_input("Images", min_value=1, max_value=1024, value=16, key="count")
noise = st.checkbox("noise GIF (needs the checkpoint's dataset here)", value=True, key="noise")
if sampler == "exact_score":
    st.info(
        "sampler=exact_score ignores the network: it follows the exact score of the checkpoint's training images, "
        "so every sample is a copy of a training image (the memorising limit, see docs/regimes.md)."
    )

if st.button("Sample", type="primary"):
    with st.spinner("sampling ..."):
        try:
            st.session_state["sample_dir"] = str(sampling.run_sample(root, ckpt, sampler, int(steps) or None, int(seed), int(count), noise))
        except USER_ERRORS as exc:
            show_error(exc)
if "sample_dir" in st.session_state:
    out = root / relative(root, st.session_state["sample_dir"])
    st.caption(f"written to {relative(root, out)}")
    cols = st.columns(3)
    gif = out / "sampling.gif"
    gif_width = Image.open(gif).width if gif.is_file() else 0
    for col, (fname, mime) in zip(
        cols, [("samples.png", "image/png"), ("sampling.gif", "image/gif"), ("noise.gif", "image/gif")], strict=True
    ):
        if (out / fname).is_file():
            data = (out / fname).read_bytes()
            col.image(sampling.preview_grid(data, gif_width) if fname == "samples.png" else data, caption=fname)
            col.download_button(f"Download {fname}", data, file_name=fname, mime=mime, key=f"dl-{fname}")

st.header("Generator")
key = (ckpt, sampler, int(steps), int(seed))
if st.session_state.get("generator_key") != key:
    st.session_state.pop("generator", None)
if st.button("New image"):
    try:
        if "generator" not in st.session_state:
            model = sampling.load_checkpoint_model(root, ckpt)  # under conf/sample.yaml's runtime settings
            cfg = sampling.compose_sample(sampling.sample_overrides(inside(root, ckpt), sampler, int(steps) or None, 0, 1, False))
            st.session_state["generator"] = sampling.Generator(model, cfg.sampler, first_seed=int(seed))
            st.session_state["generator_key"] = key
        st.session_state["generated"] = st.session_state["generator"]()
    except USER_ERRORS as exc:
        show_error(exc)
if "generated" in st.session_state and "generator" in st.session_state:
    gen_seed, img = st.session_state["generated"]
    dataset = str(st.session_state["generator"].pre.cfg.dataset.name)
    big = img.resize((img.width * 4, img.height * 4), resample=0)  # nearest: keep the pixels sharp
    st.image(big, caption=f"a new {NOUNS.get(dataset, 'image')} per click ({dataset}, seed {gen_seed})")
