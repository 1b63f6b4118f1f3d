"""The weight-porting script, kept for its users: the same command as ``rockir-port``.

    python scripts/port_torchvision_weights.py --arch resnet18 --pth resnet18-f37072fd.pth \
        --out weights/resnet18
"""

from rockir_jax.cli.port import main

if __name__ == "__main__":
    main(prog="scripts/port_torchvision_weights.py")
