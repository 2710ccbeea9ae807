"""One check per component: the official code and caef on the same seeded weights and inputs, on the CPU.

Each check builds the reference's object from its own module (imported from the user's clone), caef's from caef,
feeds both the same tensors, forces random choices equal, and returns :class:`Result` rows. Weights are PyTorch's
default initialisation of the reference's classes plus perturbed BatchNorm statistics (so every layer matters);
inputs are small, so the full-width ResNet-38s run in seconds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from caef.conformance.harness import (
    NUM_CLASSES,
    VOC_NAME,
    Context,
    Result,
    agreement,
    max_diff,
    normalised,
    scratch,
    seeded,
    test_image,
    write_voc_image,
)
from caef.conformance.reference import repo_modules


# -- ResNet-38 loading -------------------------------------------------------------------------------------
def resnet38_loading(ctx: Context) -> list[Result]:
    from caef.stages.cgnet import load_ordinary_classifier

    rows = []
    x = torch.randn(1, 3, 40, 48, generator=torch.Generator().manual_seed(ctx.seed))
    sources = [("occse", "networks.resnet38d", "Net_er"), ("occse", "networks.resnet38d", "Net_cl")]
    sources.append(("psa", "network.resnet38_cls", "Net"))
    for repo, module, cls in sources:
        with repo_modules(getattr(ctx, repo)) as load, scratch() as tmp, torch.no_grad():
            ref = seeded(getattr(load(module), cls), ctx.seed)
            ref.eval()  # the reference's train() returns None: no chaining
            torch.save(ref.state_dict(), tmp / "ref.pth")
            ours = load_ordinary_classifier(tmp / "ref.pth", NUM_CLASSES).eval()
            cams = ours(x)
            if repo == "occse":
                ref_cam, ref_logits = ref(x)
                ours_cam = cams
            else:
                ref_cam, ref_logits, ours_cam = ref.forward_cam(x), ref(x), F.relu(cams)
            diff = max(max_diff(ours_cam, ref_cam), max_diff(ours.logits(cams), ref_logits))
            name = f"ResNet-38 from {'OC-CSE' if repo == 'occse' else 'PSA'} {cls if cls != 'Net' else 'resnet38_cls'}"
            rows.append(Result(name, "max abs diff", diff, 1e-4, "CAMs and logits"))
            del ref, ours
    return rows


# -- the CGNet update ---------------------------------------------------------------------------------------
def cgnet_update(ctx: Context) -> list[Result]:
    """OC-CSE's ``model_WSSS.update`` against caef's ``CGNetModule.training_step``: same nets, images, labels,
    target classes (caef's draw replaced by the reference's) and dropout masks (same RNG state before each)."""
    import caef.stages.cgnet as cgnet
    from caef.models.backbones.resnet38 import convert_reference_state_dict

    generator = torch.Generator().manual_seed(ctx.seed)
    images = torch.randn(2, 3, 48, 48, generator=generator)
    labels = torch.zeros(2, 20)
    labels[0, [0, 14]] = 1
    labels[1, [3, 7, 11]] = 1
    with repo_modules(ctx.occse) as load, scratch() as tmp:
        model_cse = load("models.model_cse")
        args = SimpleNamespace(batch_size=2, lr=0.0, wt_dec=5e-4, max_step=10, cc_init=0.3, cc_slope=0.05)
        ref = model_cse.model_WSSS(args)
        ref.net_er = seeded(load("networks.resnet38d").Net_er, ctx.seed)
        ref.net_cl = seeded(load("networks.resnet38d").Net_cl, ctx.seed + 1)
        torch.save(ref.net_cl.state_dict(), tmp / "net_cl.pth")
        er_state = convert_reference_state_dict(ref.net_er.state_dict())
        ref.train_setup()  # lr 0: the step leaves the weights as they were, the gradients stay readable
        ref.set_phase("train")
        torch.manual_seed(ctx.seed)
        ref.unpack(([VOC_NAME] * 2, images.clone(), labels.clone()))
        targets = ref.label_mask.argmax(1)
        torch.manual_seed(ctx.seed + 7)
        ref.update(0)
        ref_net = ref.net_er.module if hasattr(ref.net_er, "module") else ref.net_er
        ref_grads = {k: p.grad.clone() for k, p in ref_net.named_parameters() if p.requires_grad}

        module = cgnet.CGNetModule(ordinary_classifier=str(tmp / "net_cl.pth"), num_classes=NUM_CLASSES)
        module.net.load_state_dict(er_state)
        module.train()
        seen: dict[str, torch.Tensor] = {}
        draw, make_mask = cgnet.sample_target_classes, cgnet.erasing_mask

        def spy_mask(*a, **k):
            seen["mask"] = make_mask(*a, **k)
            return seen["mask"]

        hook = module.ordinary_classifier.register_forward_hook(lambda m, i, o: seen.__setitem__("oc_cams", o))
        cgnet.sample_target_classes, cgnet.erasing_mask = (lambda labels, generator=None: targets), spy_mask
        try:
            torch.manual_seed(ctx.seed + 7)
            loss = module.training_step({"image": images.clone(), "label": labels.clone()}, 0)
            loss.backward()
        finally:
            cgnet.sample_target_classes, cgnet.erasing_mask = draw, make_mask
            hook.remove()
        ours_grads = {}
        for key, param in module.net.named_parameters():
            if param.requires_grad:
                name = "fc8.weight" if key == "classifier.weight" else key.removeprefix("backbone.")
                ours_grads[name] = param.grad
        oc_logits = module.ordinary_classifier.logits(seen["oc_cams"])
        rows = [
            Result("CGNet update: erasing mask", "max abs diff", max_diff(seen["mask"], ref.mask), 1e-4),
            Result(
                "CGNet update: erased image",
                "max abs diff",
                max_diff(images * (1 - seen["mask"]), ref.img_masked),
                1e-4,
            ),
            Result(
                "CGNet update: OC logits on the erased image", "max abs diff", max_diff(oc_logits, ref.out_cl), 1e-4
            ),
            Result(
                "CGNet update: loss (both terms)",
                "max abs diff",
                max_diff(loss.detach(), (ref.loss_all + ref.loss_select).detach()),
                1e-4,
            ),
        ]
        if set(ours_grads) != set(ref_grads):
            diff, note = float("inf"), f"trainable parameters differ: {sorted(set(ours_grads) ^ set(ref_grads))[:4]}"
        else:
            diff = max(max_diff(ours_grads[k], ref_grads[k]) for k in ref_grads)
            note = f"all {len(ref_grads)} trainable parameters"
        rows.append(Result("CGNet update: gradients", "max abs diff", diff, 1e-4, note))
    return rows


# -- AffinityNet ------------------------------------------------------------------------------------------
def psa_affinity_net(ctx: Context, tmp: Path, load: Callable[[str], Any]) -> tuple[torch.nn.Module, Any]:
    """PSA's seeded ``resnet38_aff.Net`` (eval) and caef's AffinityNet loaded from its saved state dict."""
    from caef.models.affinity_net import AffinityNet
    from caef.models.backbones.resnet38 import ResNet38

    ref = seeded(load("network.resnet38_aff").Net, ctx.seed)
    ref.eval()
    torch.save(ref.state_dict(), tmp / "res38_aff.pth")
    ours = AffinityNet(ResNet38())
    ours.load_init_checkpoint(tmp / "res38_aff.pth")
    return ref, ours.eval()


def affinity_net(ctx: Context) -> list[Result]:
    from caef.data.affinity_labels import pairwise_affinity

    x = torch.randn(1, 3, 64, 72, generator=torch.Generator().manual_seed(ctx.seed))
    with repo_modules(ctx.psa) as load, scratch() as tmp, torch.no_grad():
        ref, ours = psa_affinity_net(ctx, tmp, load)
        seen = {}
        hook = ref.f9.register_forward_hook(lambda m, i, o: seen.__setitem__("f9", F.elu(o)))
        ref_aff = ref(x)
        hook.remove()
        features = ours(x)
        aff = pairwise_affinity(features, 5).flatten(2)
        return [
            Result("AffinityNet features (f9)", "max abs diff", max_diff(features, seen["f9"]), 1e-4),
            Result("AffinityNet affinities (radius 5)", "max abs diff", max_diff(aff, ref_aff), 1e-4),
        ]


# -- multi-scale CAM inputs and CAMs ------------------------------------------------------------------------
def multiscale_cams(ctx: Context) -> list[Result]:
    """OC-CSE's ``VOC12ClsDatasetMSF`` inputs (PIL bicubic, then normalised) and ``infer_msf`` CAMs against caef's
    batched :func:`caef.stages.cam_inference.multiscale_cams` on the same Net_er weights."""
    from caef.stages.cam_inference import DEFAULT_SCALES, multiscale_cams, resize_images, scaled_size
    from caef.stages.cgnet import load_ordinary_classifier

    rows = []
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    for shape in ((45, 61), (61, 45), (100, 44)):
        image = test_image(*shape, ctx.seed)
        with scratch() as tmp, repo_modules(ctx.occse, cwd=ctx.occse) as load:
            voc = tmp / "VOC2012"
            write_voc_image(voc, VOC_NAME, image)
            (tmp / "list.txt").write_text(f"/JPEGImages/{VOC_NAME}.jpg\n")
            name, inputs, label = load("tools.utils").build_dataset("val", str(tmp / "list.txt"), str(voc))[0]
            ours_x = normalised(image)
            worst = 0.0
            for index, scale in enumerate(DEFAULT_SCALES):
                ours_scaled = resize_images(ours_x, scaled_size(*shape, scale))
                grey = (ours_scaled - torch.from_numpy(np.ascontiguousarray(inputs[2 * index]))[None]) * std
                worst = max(worst, float(grey.abs().max()))
            kind = "landscape" if shape[1] > shape[0] else "portrait" if shape[0] <= 2 * shape[1] else "narrow portrait"
            rows.append(
                Result(f"multi-scale inputs, {kind} {shape[0]}x{shape[1]} (grey levels)", "max abs diff", worst,
                       RESIZE_RESIDUAL if kind == "narrow portrait" else 1e-4, "PIL bicubic on uint8, scales 0.5-2")
            )  # fmt: skip
            if kind != "landscape":
                continue
            model = load("models.model_cse").model_WSSS(SimpleNamespace(batch_size=1))
            ref_net = seeded(load("networks.resnet38d").Net_er, ctx.seed)
            with torch.no_grad():  # positive, contrasted CAMs: 8 positive weights per class (random ones can be
                keep = torch.rand(ref_net.fc8.weight.shape, generator=torch.Generator().manual_seed(ctx.seed))
                ref_net.fc8.weight.abs_().mul_(keep > 1 - 8 / keep.shape[1])  # negative everywhere, or flat)
            torch.save(ref_net.state_dict(), tmp / "net_er.pth")
            model.net_er, model.net_cl = ref_net, ref_net
            model.set_phase("eval")
            model.unpack(([name], [torch.from_numpy(np.ascontiguousarray(i))[None] for i in inputs], label[None]))
            model.net_er_replicas = [ref_net]
            model.infer_msf(0, str(tmp), str(tmp), str(tmp))
            ours_net = load_ordinary_classifier(tmp / "net_er.pth", NUM_CLASSES).eval()
            cams = multiscale_cams(ours_net, ours_x, label[None].float())[0]
            classes = sorted(model.cam_dict)
            ref_cams = np.stack([model.cam_dict[c] for c in classes])
            rows.append(
                Result(
                    "multi-scale + flip CAMs (normalised)",
                    "max abs diff",
                    max_diff(cams[classes], ref_cams),
                    1e-4,
                    f"classes {classes}, mean value {float(ref_cams.mean()):.3f}",
                )
            )
    return rows


# -- affinity labels ----------------------------------------------------------------------------------------
def affinity_labels(ctx: Context) -> list[Result]:
    from caef.data.affinity_labels import extract_affinity_labels

    rng = np.random.default_rng(ctx.seed)
    label = rng.choice(np.array([0, 0, 1, 2, 3, 255], np.uint8), size=(24, 24))
    rows = []
    with repo_modules(ctx.psa) as load:
        extract = load("voc12.data").ExtractAffinityLabelInRadius
        for radius in (3, 5, 7):
            ref = extract(cropsize=24, radius=radius)(label)
            ours = extract_affinity_labels(torch.from_numpy(label).long(), radius)
            agree = min(agreement(o.flatten(1).numpy(), r.numpy() > 0) for o, r in zip(ours, ref))
            rows.append(Result(f"affinity labels, radius {radius}", "label agreement", agree, 100.0, "bg, fg, neg"))
    return rows


# -- the random walk ----------------------------------------------------------------------------------------
def random_walk(ctx: Context) -> list[Result]:
    """PSA's ``infer_aff.py`` run as a script on a one-image tree against caef's features + :func:`propagate`."""
    import runpy
    import sys

    from caef.stages.random_walk import propagate

    height, width = 52, 76
    image = test_image(height, width, ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    cams = {k: rng.random((height, width)).astype(np.float32) ** 2 for k in (0, 14)}  # aeroplane, person
    with scratch() as tmp, repo_modules(ctx.psa) as load:
        ref_net, ours = psa_affinity_net(ctx, tmp, load)
        del ref_net
        write_voc_image(tmp / "VOC2012", VOC_NAME, image)
        (tmp / "list.txt").write_text(f"/JPEGImages/{VOC_NAME}.jpg\n")
        (tmp / "cams").mkdir()
        np.save(tmp / "cams" / f"{VOC_NAME}.npy", cams)
        (tmp / "out").mkdir()
        argv = ["infer_aff.py", "--weights", str(tmp / "res38_aff.pth"), "--network", "network.resnet38_aff"]
        argv += ["--infer_list", str(tmp / "list.txt"), "--num_workers", "0", "--cam_dir", str(tmp / "cams")]
        argv += ["--voc12_root", str(tmp / "VOC2012"), "--out_rw", str(tmp / "out")]
        old_argv = sys.argv
        sys.argv = argv
        try:
            with contextlib.redirect_stdout(None):
                runpy.run_path(str(ctx.psa / "infer_aff.py"), run_name="__main__")
        finally:
            sys.argv = old_argv
        ref_labels = np.asarray(Image.open(tmp / "out" / f"{VOC_NAME}.png"))
        x = normalised(image)
        x = F.pad(x, (0, -width % 8, 0, -height % 8))
        with torch.no_grad():
            features = ours(x)[0]
        classes = torch.tensor([k + 1 for k in sorted(cams)])
        stacked = torch.from_numpy(np.stack([cams[k] for k in sorted(cams)]))
        labels = propagate(stacked, classes, features, alpha=16, beta=8, logt=8).numpy()
    return [Result("random walk (alpha 16, beta 8, t = 256)", "label agreement", agreement(labels, ref_labels), 100.0)]


# -- CRF seeds ----------------------------------------------------------------------------------------------
def crf_seeds(ctx: Context) -> list[Result]:
    """OC-CSE's ``_crf_with_alpha`` (PSA's CRF) against caef's :func:`caef.stages.crf.crf_labels`."""
    from caef.stages.crf import crf_labels

    height, width = 40, 56
    image = test_image(height, width, ctx.seed)
    rng = np.random.default_rng(ctx.seed + 1)
    keys = (0, 14)
    cams = {k: rng.random((height, width)).astype(np.float32) for k in keys}
    rows = []
    with scratch() as tmp:
        write_voc_image(tmp / "data" / "VOC2012", VOC_NAME, image)
        with repo_modules(ctx.occse, cwd=tmp) as load:
            crf_with_alpha = load("tools.imutils")._crf_with_alpha
            for alpha in (4, 6, 24, 32):
                scores = crf_with_alpha(cams, VOC_NAME, alpha=alpha)
                order = sorted(scores)
                ref = np.asarray(order)[np.stack([scores[k] for k in order]).argmax(0)]
                ours = crf_labels(image, np.stack([cams[k] for k in keys]), np.array([k + 1 for k in keys]), alpha)
                rows.append(Result(f"CRF seeds, alpha {alpha}", "label agreement", agreement(ours, ref), 100.0))
    return rows


#: the stated residual of the multi-scale inputs on portraits narrower than about 1:2: when the height shrinks by more
#: than twice as many pixels as the width, recent Pillow (not the Pillow 8 of the reference's time, which caef
#: follows) runs its vertical pass first (measured against Pillow 13: up to 7 grey levels on ~20 % of the pixels)
RESIZE_RESIDUAL = 8.0

COMPONENTS: dict[str, Callable[[Context], list[Result]]] = {
    "resnet38": resnet38_loading,
    "cgnet": cgnet_update,
    "affinity_net": affinity_net,
    "multiscale_cams": multiscale_cams,
    "affinity_labels": affinity_labels,
    "random_walk": random_walk,
    "crf_seeds": crf_seeds,
}
