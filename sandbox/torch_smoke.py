"""A normal (small) torch training run used by the tests, bench/sandbox_overhead.py and the GPU check.

Run as a script: trains a tiny MLP for a few steps with DataLoader(num_workers=2) and saves model.pt
into $AR_RUN_DIR (or the cwd). Prints one JSON line: {"ok": true, "device": ..., "cuda_available": ...}.
"""

TRAIN_SCRIPT = r'''
import json, os, sys, time
t0 = time.time()
import torch
from torch.utils.data import DataLoader, TensorDataset

def main():
    torch.manual_seed(0)
    want_cuda = os.environ.get("SMOKE_DEVICE", "auto")
    cuda = torch.cuda.is_available()
    dev = "cuda" if (cuda and want_cuda != "cpu") else "cpu"
    x = torch.randn(512, 32)
    y = (x.sum(1) > 0).long()
    dl = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, num_workers=2, persistent_workers=False)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = int(os.environ.get("SMOKE_STEPS", "8"))
    step = 0
    while step < steps:
        for xb, yb in dl:
            loss = torch.nn.functional.cross_entropy(model(xb.to(dev)), yb.to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    out = os.path.join(os.environ.get("AR_RUN_DIR", "."), "model.pt")
    torch.save(model.state_dict(), out)
    info = {"ok": True, "device": dev, "cuda_available": cuda, "loss": float(loss), "saved": out,
            "seconds": round(time.time() - t0, 3), "torch": torch.__version__}
    if cuda:
        info["cuda_device_count"] = torch.cuda.device_count()
        info["cuda_name"] = torch.cuda.get_device_name(0)
    print("SMOKE " + json.dumps(info), flush=True)

if __name__ == "__main__":
    main()
'''
