"""A web UI for the scripts' tasks, drawn with Gradio over the same pipeline (``ldm.load``):
``pip install -e ".[web]"`` then ``python scripts/webui.py`` and open http://127.0.0.1:7860.

Local by default (127.0.0.1); ``--listen`` serves the network, ``--share`` makes a public Gradio
link; analytics are off and the page loads nothing from the internet. The work apart from the page
(controls, models, saving, PNG parameters) is :mod:`ldm.inference.webui`."""

import argparse
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ldm.inference import webui
from ldm.inference.cli import add_device_arg, user_error_message
from ldm.inference.errors import UsageError
from ldm.inference.images import read_parameters

TITLES = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "Inpaint", "depth2img": "Depth2img",
          "upscale": "Upscale x4", "edit": "Edit", "unclip": "unCLIP", "class": "Class",
          "unconditional": "Unconditional"}
SEND_TARGETS = ("img2img", "inpaint")
WIDE_CONTROLS = ("prompt", "negative_prompt", "source_prompt", "classes")
PNG_INFO_TARGETS = ("txt2img", "img2img", "inpaint")
# System fonts: Gradio's default theme would fetch its fonts from Google.
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
PAGE_CHECK_S = 60


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webui.py", description="Serve a web UI for txt2img, img2img, inpainting, "
                                     "depth2img, upscaling and the other tasks, on 127.0.0.1 unless told otherwise.")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: %(default)s)")
    parser.add_argument("--listen", action="store_true",
                        help="serve on every network interface (0.0.0.0), not only this machine")
    parser.add_argument("--share", action="store_true",
                        help="also make a public gradio.live link (Gradio downloads its tunnel client once)")
    parser.add_argument("--outdir", type=str, default="outputs",
                        help="images go to OUTDIR/<task>-samples/ as the scripts write them (default: %(default)s)")
    group = parser.add_argument_group("model")
    add_device_arg(group)
    group.add_argument("--precision", type=str, choices=["full", "autocast"], default="autocast",
                       help="as the scripts' --precision (default: %(default)s)")
    group.add_argument("--models-in-memory", type=int, default=1,
                       help="how many models stay loaded between requests (default: %(default)s)")
    return parser


class Page:
    """The page's components, by tab, and the handlers that wire them."""

    def __init__(self, gr: Any, models: webui.ModelCache, outdir: str):
        self.gr, self.models, self.outdir = gr, models, outdir
        self.controls: Dict[str, Dict[str, Any]] = {}
        self.inputs: Dict[str, Dict[str, Any]] = {}
        self.results: Dict[str, Tuple[Any, ...]] = {}
        self.tabs: Any = None

    # -- layout ----------------------------------------------------------------------------------
    def build(self) -> Any:
        """The page: a tab per task, then PNG info; events are wired once every tab exists (a tab
        sends images and parameters to the others)."""
        gr = self.gr
        with gr.Blocks(analytics_enabled=False, title="ldm web UI") as demo:
            with gr.Tabs() as self.tabs:
                for task in webui.WEB_TASKS:
                    with gr.Tab(TITLES[task], id=task, elem_id=f"tab-{task}"):
                        self.results[task] = self._task_tab(task)
                with gr.Tab("PNG info", id="png-info", elem_id="tab-png-info"):
                    png_info = self._png_info_tab()
            for task, results in self.results.items():
                self._wire_results(task, *results)
            self._wire_png_info(*png_info)
        return demo

    @property
    def theme(self) -> Any:
        """Gradio's default look with the system's fonts (its own would be fetched from Google)."""
        return self.gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)

    def _task_tab(self, task: str) -> Tuple[Any, ...]:
        gr = self.gr
        choices = webui.checkpoint_choices(task)
        with gr.Row():
            ckpt = gr.Dropdown(choices, value=choices[0], allow_custom_value=True, scale=3, elem_id=f"{task}-ckpt",
                               label="Checkpoint (from checkpoints/, or type a path)")
            config = gr.Textbox(label="Config (blank: the one beside the checkpoint, or the original its layout "
                                "fits)", scale=3, elem_id=f"{task}-config")
        with gr.Row():
            with gr.Column(scale=1):
                self.inputs[task] = self._image_inputs(task)
                self.controls[task] = self._controls(task)
                reuse = gr.Button("Reuse seed", size="sm", elem_id=f"{task}-reuse-seed")
                button = gr.Button("Generate", variant="primary", elem_id=f"{task}-generate")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Images", columns=3, format="png", elem_id=f"{task}-gallery",
                                     buttons=["download", "fullscreen"])
                parameters = gr.Textbox(label="Parameters of the selected image", lines=4, interactive=False,
                                        elem_id=f"{task}-parameters")
                with gr.Row():
                    sends = {target: gr.Button(f"Send to {TITLES[target]}", size="sm",
                                               elem_id=f"{task}-send-{target}") for target in SEND_TARGETS}
        made, selected = gr.State([]), gr.State(0)
        fields = {ckpt, config, *self.controls[task].values(), *self.inputs[task].values()}
        button.click(self._generator(task, ckpt, config), inputs=fields, outputs=[gallery, made, selected, parameters],
                     concurrency_limit=1, concurrency_id="generate")
        reuse.click(self._reuse_seed, inputs=[made, selected], outputs=[self.controls[task]["seed"]])
        return gallery, made, selected, parameters, sends

    def _image_inputs(self, task: str) -> Dict[str, Any]:
        gr = self.gr
        names = webui.task_inputs(task)
        components = {}
        if "mask" in names:
            components["init_img"] = gr.ImageMask(label="Image: draw where to repaint", type="pil",
                                                  sources=["upload", "clipboard"], layers=False,
                                                  brush=gr.Brush(colors=[("#ffffff", 0.7)],
                                                                 color_mode="fixed"),
                                                  elem_id=f"{task}-init-img")
            components["mask"] = gr.Image(label="Mask (optional, instead of drawing; white = repaint)", type="pil",
                                          image_mode="L", sources=["upload"], elem_id=f"{task}-mask", height=160)
        elif "init_img" in names:
            components["init_img"] = gr.Image(label="Image", type="pil", image_mode="RGB",
                                              sources=["upload", "clipboard"], elem_id=f"{task}-init-img")
        if "depth" in names:
            components["depth"] = gr.Image(label="Depth map (optional; brighter = nearer; blank: the model's "
                                           "estimate)", type="pil", sources=["upload"], elem_id=f"{task}-depth",
                                           height=160)
        return components

    def _controls(self, task: str) -> Dict[str, Any]:
        """The tab's options: text fields across the column, the others three to a row."""
        defaults = webui.task_controls(task)
        wide = [name for name in defaults if name in WIDE_CONTROLS]
        narrow = [name for name in defaults if name not in WIDE_CONTROLS]
        controls = {name: self._control(task, name, defaults[name]) for name in wide}
        for start in range(0, len(narrow), 3):
            with self.gr.Row():
                controls.update((name, self._control(task, name, defaults[name])) for name in narrow[start:start + 3])
        return controls

    def _control(self, task: str, name: str, value: Any) -> Any:
        gr = self.gr
        label, elem_id = webui.LABELS[name], f"{task}-{name}"
        if name in ("prompt", "negative_prompt", "source_prompt"):
            return gr.Textbox(value=value or "", label=label, lines=2, elem_id=elem_id)
        if name in ("classes", "guide_color", "token_merging"):  # blank: off (the label says so)
            return gr.Textbox(value=value or "", label=label, elem_id=elem_id)
        if name == "sampler":
            return gr.Dropdown(webui.sampler_choices(), value=value, label=label, elem_id=elem_id)
        if name == "color_transfer":
            return gr.Checkbox(value=bool(value), label=label, elem_id=elem_id)
        if name in ("strength", "keep"):
            return gr.Slider(0.0, 1.0, value=value, step=0.01, label=label, elem_id=elem_id)
        if value is None:  # the model's own default: a text field that may stay blank
            return gr.Textbox(value="", label=label, placeholder="blank: the model's default", elem_id=elem_id)
        whole = name in ("steps", "seed", "n_iter", "n_samples", "inversion_steps", "noise_level", "batch_size")
        return gr.Number(value=value, label=label, precision=0 if whole else None, elem_id=elem_id)

    def _png_info_tab(self) -> Tuple[Any, ...]:
        gr = self.gr
        dropped = gr.File(label="Drop a PNG made here or by AUTOMATIC1111", file_types=["image"], type="filepath",
                          elem_id="png-info-file")
        text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="png-info-parameters")
        with gr.Row():
            sends = {target: gr.Button(f"Send to {TITLES[target]}", size="sm", elem_id=f"png-info-send-{target}")
                     for target in PNG_INFO_TARGETS}
        return dropped, text, sends

    # -- handlers --------------------------------------------------------------------------------
    def _generator(self, task: str, ckpt: Any, config: Any):
        gr = self.gr
        controls, inputs = self.controls[task], self.inputs[task]

        def generate(data: Dict[Any, Any], progress=gr.Progress()):
            values = {name: data[component] for name, component in controls.items()}
            try:
                values.update(_input_values(task, {name: data[component] for name, component in inputs.items()}))
                made = webui.generate(self.models, task, data[ckpt], data[config], values, self.outdir,
                                      progress=lambda fraction, text: progress(fraction, desc=text))
            except Exception as err:  # the scripts' one-line errors in the page; a bug stays a traceback
                message = user_error_message(err)
                if message is None:
                    raise
                raise gr.Error(message, print_exception=False) from None
            gallery = [(str(item.path), f"seed {webui.controls_from_parameters(item.parameters).get('seed', '')}")
                       for item in made]
            return gallery, [(str(item.path), item.parameters) for item in made], 0, made[0].parameters if made else ""
        return generate

    def _reuse_seed(self, made: List[Tuple[str, str]], selected: int):
        if not made:
            raise self.gr.Error("no image yet: generate one first")
        return webui.controls_from_parameters(made[selected][1]).get("seed", -1)

    def _read_png(self, path: Optional[str]) -> str:
        if not path:
            return ""
        return self._png_parameters(path) or "(this image holds no parameters)"

    def _png_parameters(self, path: str) -> Optional[str]:
        try:
            return read_parameters(path)
        except (OSError, ValueError) as err:
            raise self.gr.Error(f"cannot read {Path(path).name} as an image ({err})", print_exception=False) from None

    def _wire_results(self, task: str, gallery: Any, made: Any, selected: Any, parameters: Any,
                      sends: Dict[str, Any]) -> None:
        def select(made_now: List[Tuple[str, str]], event: self.gr.SelectData):
            return event.index, made_now[event.index][1]
        gallery.select(select, inputs=[made], outputs=[selected, parameters])
        for target, button in sends.items():
            button.click(self._sender(target, from_made=True), inputs=[made, selected],
                         outputs=self._send_outputs(target))

    def _wire_png_info(self, dropped: Any, text: Any, sends: Dict[str, Any]) -> None:
        dropped.change(self._read_png, inputs=[dropped], outputs=[text])
        for target, button in sends.items():
            button.click(self._sender(target, from_made=False), inputs=[dropped],
                         outputs=self._send_outputs(target))

    def _send_outputs(self, target: str) -> List[Any]:
        image = [self.inputs[target]["init_img"]] if "init_img" in self.inputs[target] else []
        return [self.tabs, *image, *self.controls[target].values()]

    def _sender(self, target: str, from_made: bool):
        """A handler that opens ``target``'s tab with an image and its parameters: the selected image
        of a gallery, or the PNG dropped on the PNG info tab."""
        gr = self.gr
        names = list(self.controls[target])
        takes_image = "init_img" in self.inputs[target]

        def send(source: Any, selected: int = 0):
            if not source:
                raise gr.Error("no image yet: generate one first" if from_made else "drop a PNG first")
            path, text = source[selected] if from_made else (source, self._png_parameters(source))
            values = webui.controls_from_parameters(text) if text else {}
            if takes_image:  # the image's own size
                for name in ("W", "H"):
                    values.pop(name, None)
            image = [path] if takes_image else []
            return [gr.Tabs(selected=target), *image, *(values[name] if name in values else gr.skip()
                                                         for name in names)]
        return send


def _input_values(task: str, images: Dict[str, Any]) -> Dict[str, Any]:
    """The tab's image inputs as pipeline keywords: ``image`` (and ``mask``, ``depth``); the inpaint
    tab's mask drawn on the image, or the uploaded one."""
    values: Dict[str, Any] = {}
    editor = images.get("init_img")
    if isinstance(editor, dict):  # the inpaint tab's image editor: background and drawn layers
        # The composite (image and strokes) equals the image wherever the mask keeps it: a stand-in when the
        # browser sent no background of its own.
        image = next((editor[key] for key in ("background", "composite") if editor.get(key) is not None), None)
        values["image"] = image.convert("RGB") if image is not None else None
        drawn = _drawn_mask(editor.get("layers") or [])
        values["mask"] = drawn if drawn is not None else images.get("mask")
        if values["image"] is not None and values["mask"] is None:
            raise UsageError("--mask is required: draw on the image where to repaint, or upload a mask "
                             "(white = repaint)")
    elif "init_img" in images:
        values["image"] = editor
    if images.get("depth") is not None:
        values["depth"] = images["depth"]
    return values


def _drawn_mask(layers: List[Image.Image]) -> Optional[Image.Image]:
    """White where any layer was drawn on (its alpha), black elsewhere; None when nothing was drawn."""
    drawn = None
    for layer in layers:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA"))[..., 3] > 0
        drawn = alpha if drawn is None else drawn | alpha
    if drawn is None or not drawn.any():
        return None
    return Image.fromarray(drawn.astype(np.uint8) * 255, mode="L")


def _patient_page_check(networking: Any) -> None:
    """Once serving, Gradio checks that its page answers and, if not, refuses to run without a share
    link; its check gives up at the first 3 s timeout, which a busy machine's first answer can take.
    Retry it for up to a minute."""
    check = networking.url_ok

    def patient(url: str) -> bool:
        deadline = time.monotonic() + PAGE_CHECK_S
        while time.monotonic() < deadline:
            if check(url):
                return True
        return False
    networking.url_ok = patient


def main(argv: Optional[List[str]] = None) -> None:
    opt = build_parser().parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before Gradio is imported: no telemetry, no version check
    try:
        import gradio as gr
        import gradio.networking
    except ImportError:
        build_parser().error('needs Gradio: pip install -e ".[web]"')
    page = Page(gr, webui.ModelCache(opt.device, opt.precision, max(1, opt.models_in_memory)), opt.outdir)
    _patient_page_check(gr.networking)
    demo = page.build()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name="0.0.0.0" if opt.listen else "127.0.0.1", server_port=opt.port, share=opt.share,
                inbrowser=False, ssr_mode=False, mcp_server=False, footer_links=[], pwa=False,
                theme=page.theme, allowed_paths=[str(Path(opt.outdir).resolve())])


if __name__ == "__main__":
    main()
