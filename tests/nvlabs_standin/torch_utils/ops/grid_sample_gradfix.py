import torch.nn.functional as F

enabled = False


def grid_sample(input, grid):
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
