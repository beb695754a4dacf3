"""kohya's loss and noise options, each with its effect: zero_terminal_snr, ip_noise_gamma,
debiased_estimation_loss, scale_v_pred_loss_like_noise_pred, v_pred_like_loss (and their order
with min_snr_gamma). Reference numbers marked "kohya" were computed once with kohya-ss/sd-scripts
48d368fa (custom_train_functions / NetworkTrainer.post_process_loss) and frozen here."""

import pytest
import torch

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.families import get_family
from trainer.train.loop import Callbacks, train
from trainer.train.loss_weights import apply_loss_weights, check_loss_options, weighting_snr
from trainer.train.noise import input_perturbation
from trainer.train.step import diffusion_loss, draw_input_noise


def weights(config: TrainConfig, scheduler, timesteps) -> torch.Tensor:
    return apply_loss_weights(torch.ones(len(timesteps)), scheduler, timesteps, config)


def snr_of(scheduler) -> torch.Tensor:
    ac = scheduler.alphas_cumprod.double()
    return ac / (1 - ac)


# -- zero_terminal_snr ----------------------------------------------------------------------------
@pytest.mark.parametrize("family, kohya_betas, kohya_cumprod", [
    # kohya: fix_noise_scheduler_betas_for_zero_terminal_snr on its SD scheduler (1000 steps, 0.012) ...
    ("sd15", [0.0008500218391418457, 0.0009172558784484863, 0.0055304765701293945, 0.7511317729949951, 1.0],
     [0.9991499781608582, 0.9982334971427917, 0.2410186380147934, 1.9679633567193378e-07, 0.0]),
    # ... and on Kolors' schedule (1100 steps, 0.014)
    ("kolors", [0.0008499026298522949, 0.0008851885795593262, 0.005201876163482666, 0.7514103651046753, 1.0],
     [0.9991500973701477, 0.9982656836509705, 0.2562824785709381, 6.34817567402024e-08, 0.0]),
])
def test_zero_terminal_snr_gives_kohyas_betas(family, kohya_betas, kohya_cumprod):
    fam = get_family(family)
    plain, fixed = fam.training_scheduler(), fam.training_scheduler(zero_terminal_snr=True)
    steps = plain.config.num_train_timesteps
    at = [0, 1, 500, steps - 2, steps - 1]
    assert fixed.betas[at].tolist() == pytest.approx(kohya_betas, rel=1e-6, abs=1e-12)
    assert fixed.alphas_cumprod[at].tolist() == pytest.approx(kohya_cumprod, rel=1e-5, abs=1e-12)
    assert fixed.alphas_cumprod[-1] == 0  # zero SNR at the last step: pure noise in, as the sampler starts
    # the paper's Algorithm 1: sqrt(alphas_cumprod) shifted to end at 0 and scaled to keep its start
    old = plain.alphas_cumprod.double().sqrt()
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    assert torch.allclose(fixed.alphas_cumprod.double().sqrt(), expected, atol=1e-6)
    # at the last step the noisy input is the noise itself
    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    last = torch.tensor([steps - 1])
    assert torch.allclose(fixed.add_noise(latents, noise, last), noise)


def test_loss_weights_read_the_snr_of_the_schedule_before_the_fix():
    # kohya computes all_snr before fixing the betas: its weights keep the original SNR
    fam = get_family("sd15")
    fixed = fam.training_scheduler(zero_terminal_snr=True)
    t = torch.tensor([0, 1, 500, 998, 999])
    kohya_all_snr = [1175.4405517578125, 585.8621826171875, 0.38185006380081177, 0.004739048890769482,
                     0.004681912250816822]
    assert weighting_snr(fixed, t).tolist() == pytest.approx(kohya_all_snr, rel=1e-5)


def test_zero_terminal_snr_reaches_the_training_noise(tiny_models, star_dataset, tmp_path):
    from trainer.train.distributed import Distributed
    from trainer.train.loop import StepLoop
    from trainer.train.run_setup import prepare_run

    logs = []
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(star_dataset),
                         resolution="64", network_dim=4, network_alpha=4, max_train_steps=1, train_batch_size=2,
                         output_dir=str(tmp_path), output_name="zt", zero_terminal_snr=True,
                         debiased_estimation_loss=True)
    setup = prepare_run(config, None, None, Callbacks(log=logs.append), None, Distributed())
    assert setup.scheduler.alphas_cumprod[-1] == 0
    assert any("zero_terminal_snr is on but v_parameterization is not" in line for line in logs)
    result = StepLoop(setup).run()
    assert result.steps == 1 and all(torch.isfinite(torch.tensor(result.losses)))


# -- the loss weights -----------------------------------------------------------------------------
def test_debiased_estimation_weights_are_one_over_sqrt_snr():
    sched = get_family("sd15").training_scheduler()
    t = torch.tensor([0, 3, 100, 500, 999])
    snr = snr_of(sched)[t].clamp(max=1000)
    got = weights(TrainConfig(debiased_estimation_loss=True), sched, t)
    assert torch.allclose(got.double(), 1 / snr.sqrt(), rtol=1e-4)
    assert got[0] == pytest.approx(1 / 1000 ** 0.5, rel=1e-5)  # SNR(0) ~ 1175, capped at 1000 as kohya does
    v = get_family("sd15").training_scheduler(v_prediction=True)
    got_v = weights(TrainConfig(debiased_estimation_loss=True, v_parameterization=True), v, t)
    assert torch.allclose(got_v.double(), 1 / (snr + 1), rtol=1e-4)


def test_scale_v_pred_loss_like_noise_pred_and_v_pred_like_loss_weights():
    t = torch.tensor([0, 50, 400, 999])
    v = get_family("sd15").training_scheduler(v_prediction=True)
    snr = snr_of(v)[t].clamp(max=1000)
    scaled = weights(TrainConfig(scale_v_pred_loss_like_noise_pred=True, v_parameterization=True), v, t)
    assert torch.allclose(scaled.double(), snr / (snr + 1), rtol=1e-4)
    eps = get_family("sd15").training_scheduler()
    added = weights(TrainConfig(v_pred_like_loss=0.3), eps, t)
    # loss + loss / (SNR / (SNR + 1)) * 0.3
    assert torch.allclose(added.double(), 1 + 0.3 * (snr + 1) / snr, rtol=1e-4)


@pytest.mark.parametrize("v_prediction, kohya", [
    (False, [0.00020183912420179695, 0.0035724807530641556, 9.092835426330566, 75.81395721435547,
             2374.017333984375]),
    (True, [4.241620899847476e-06, 0.00022670935140922666, 0.11051800847053528, 4.935518154525198e-05,
            3.242291495553218e-05]),
])
def test_all_weights_together_match_kohyas_post_process_loss(v_prediction, kohya):
    # kohya: zero_terminal_snr, min_snr_gamma 5, debiased, and v_pred_like_loss 0.5 (noise prediction)
    # or scale_v_pred_loss_like_noise_pred (v-prediction), on these per-sample losses
    config = TrainConfig(zero_terminal_snr=True, v_parameterization=v_prediction, min_snr_gamma=5.0,
                         scale_v_pred_loss_like_noise_pred=v_prediction,
                         v_pred_like_loss=None if v_prediction else 0.5, debiased_estimation_loss=True)
    sched = get_family("sd15").training_scheduler(v_prediction, zero_terminal_snr=True)
    loss = torch.tensor([1.0, 0.5, 2.0, 0.25, 1.5])
    t = torch.tensor([0, 10, 500, 900, 999])
    assert apply_loss_weights(loss, sched, t, config).tolist() == pytest.approx(kohya, rel=1e-5)


def test_prior_loss_weight_multiplies_before_the_snr_weights():
    sched = get_family("sd15").training_scheduler()
    t = torch.tensor([10, 10])
    config = TrainConfig(min_snr_gamma=5.0, debiased_estimation_loss=True)
    got = apply_loss_weights(torch.ones(2), sched, t, config, sample_weights=torch.tensor([1.0, 0.25]))
    assert got[1] == pytest.approx(0.25 * float(got[0]), rel=1e-6)


def test_kohyas_refusals_and_warning():
    with pytest.raises(TrainerError, match="scale_v_pred_loss_like_noise_pred works only with v_parameterization"):
        check_loss_options(TrainConfig(scale_v_pred_loss_like_noise_pred=True))
    with pytest.raises(TrainerError, match="v_pred_like_loss cannot be used with v_parameterization"):
        check_loss_options(TrainConfig(v_pred_like_loss=0.2, v_parameterization=True))
    logs = []
    check_loss_options(TrainConfig(zero_terminal_snr=True, v_parameterization=True), logs.append)
    assert logs == []
    check_loss_options(TrainConfig(zero_terminal_snr=True), logs.append)
    assert len(logs) == 1 and "warning" in logs[0]


@pytest.mark.parametrize("prediction, v_param, warned", [
    ("epsilon", False, None), ("v_prediction", True, None),
    ("epsilon", True, "remove v_parameterization"), ("v_prediction", False, "set v_parameterization = true")])
def test_a_folders_scheduler_prediction_type_is_checked_against_v_parameterization(tmp_path, prediction, v_param,
                                                                                  warned):
    """A diffusers folder ships scheduler/scheduler_config.json (SD2-768: "v_prediction"): a
    v_parameterization that disagrees is pointed out; a single file or no folder says nothing."""
    import json

    from trainer.models.loaded import check_prediction_type

    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "EulerDiscreteScheduler", "prediction_type": prediction, "num_train_timesteps": 1000}))
    logs = []
    check_prediction_type(tmp_path, v_param, logs.append)
    assert logs == [] if warned is None else (len(logs) == 1 and warned in logs[0])
    check_prediction_type(tmp_path / "model.safetensors", v_param, logs.append)
    check_prediction_type("", v_param, logs.append)
    assert len(logs) == (0 if warned is None else 1)


# -- ip_noise_gamma -------------------------------------------------------------------------------
def test_input_perturbation_adds_gamma_scaled_noise_and_draws_nothing_when_off():
    noise = torch.randn(64, 4, 16, 16)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert input_perturbation(noise, gen, None) is None and input_perturbation(noise, gen, 0.0) is None
    assert torch.equal(gen.get_state(), state)  # runs without it keep their random sequence
    extra = input_perturbation(noise, gen, 0.1) - noise
    assert float(extra.std()) == pytest.approx(0.1, rel=0.02)
    # random strength: one strength per batch, uniform in [0, gamma)
    strengths = [float((input_perturbation(noise, gen, 0.1, True) - noise).std()) for _ in range(40)]
    assert max(strengths) < 0.1 and min(strengths) < 0.03 and max(strengths) > 0.07


def test_ip_noise_gamma_changes_the_unet_input_but_not_the_target(tiny_models):
    from trainer.models.loader import load_model

    model = load_model(tiny_models("sd15"), "sd15")
    sched = model.family.training_scheduler()
    with torch.no_grad():
        cond = model.family.encode_text(model.pipe, ["a star", "a star"], torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    latents, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([100, 700])
    input_noise = draw_input_noise(noise, gen, TrainConfig(ip_noise_gamma=0.5))
    seen = {}

    def hook(module, args, kwargs, output):
        seen["input"], seen["pred"] = args[0].detach().clone(), output.sample.detach().clone()

    handle = model.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            loss = diffusion_loss(model, sched, latents, cond, None, noise, timesteps, torch.autocast("cpu", enabled=False),
                                  TrainConfig(ip_noise_gamma=0.5), input_noise=input_noise)
    finally:
        handle.remove()
    assert torch.allclose(seen["input"], sched.add_noise(latents, input_noise, timesteps))
    assert not torch.allclose(seen["input"], sched.add_noise(latents, noise, timesteps), atol=1e-2)
    assert float(loss) == pytest.approx(float(((seen["pred"] - noise) ** 2).mean()), rel=1e-5)  # target: noise


def test_every_option_at_once_trains(tiny_models, star_dataset, tmp_path):
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(star_dataset),
                         resolution="64", network_dim=4, network_alpha=4, max_train_steps=2, train_batch_size=2,
                         output_dir=str(tmp_path), output_name="all", v_parameterization=True,
                         zero_terminal_snr=True, scale_v_pred_loss_like_noise_pred=True, min_snr_gamma=5,
                         debiased_estimation_loss=True, ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True,
                         loss_type="huber", huber_schedule="snr")
    result = train(config)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
