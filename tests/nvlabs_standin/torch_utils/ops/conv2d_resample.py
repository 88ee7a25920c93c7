from . import conv2d_gradfix, upfirdn2d


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """The chain of the definition, step by step (no reordering)."""
    x0, x1, y0, y1 = upfirdn2d._pad4(padding)
    fw, fh = upfirdn2d._size(f)
    if up > 1:
        x0, x1, y0, y1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    x = upfirdn2d.upfirdn2d(x, f if up > 1 else None, up=up, padding=[x0, x1, y0, y1], gain=up * up,
                            flip_filter=flip_filter)
    x = conv2d_gradfix.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    return upfirdn2d.upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x
