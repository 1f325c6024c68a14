"""The model compiles as whole graphs: the training forward and backward, and the evaluation forward, with no
graph break (``fullgraph=True``: no host reads inside) and no recompilation across the lambdas of a batch.
Dynamo's capture is what is checked, with its ``eager`` backend (no C++ compiler needed)."""
import pytest
import torch
import torch._dynamo

import lvae


@pytest.mark.slow  # torch.compile
def test_the_training_step_compiles_as_one_graph_for_every_lambda():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    im = torch.rand(2, 3, 64, 64)
    losses = []
    for lmb in ([8.0, 512.0], [4.0, 2048.0], [64.0, 64.0]):
        lmb = torch.tensor(lmb)
        torch.manual_seed(1)
        eager = model(im, lmb)
        with torch._dynamo.config.patch(error_on_recompile=len(losses) > 0):
            torch.manual_seed(1)
            out = compiled(im, lmb)
        out['loss'].backward()
        losses.append(out['loss'].item())
        assert out['bppix'].item() > 0
        torch.testing.assert_close(out['loss'], eager['loss'], rtol=1e-5, atol=0)
        torch.testing.assert_close(out['psnr'], eager['psnr'], rtol=1e-5, atol=0)
    assert all(p.grad is not None for p in model.parameters())
    assert len(set(losses)) == 3


@pytest.mark.slow  # torch.compile
def test_the_evaluation_forward_compiles_as_one_graph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny').eval()
    forward = torch.compile(model.forward_end2end, fullgraph=True, backend='eager')
    im = torch.rand(3, 3, 64, 128)
    with torch.inference_mode():
        for i, lmb in enumerate(([4.0, 64.0, 2048.0], [8.0, 8.0, 8.0])):
            lmb = torch.tensor(lmb)
            torch.manual_seed(2)
            x_ref, stats_ref = model.forward_end2end(im, lmb)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                torch.manual_seed(2)
                x_hat, stats = forward(im, lmb)
            torch.testing.assert_close(x_hat, x_ref, rtol=0, atol=1e-5)
            torch.testing.assert_close(model.kl_per_image(stats), model.kl_per_image(stats_ref), rtol=1e-5, atol=0)
