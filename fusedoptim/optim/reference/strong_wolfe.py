"""The strong Wolfe line search of L-BFGS (``line_search_fn="strong_wolfe"``), torch.optim.LBFGS's
(itself ported from Torch7's lswolfe.lua), over any vector operations: ``vectors`` is a
``reference.history.FlatVectors`` (the oracle) or the fused impl's launches (``optim.history``).

A step length t is accepted when it satisfies the strong Wolfe conditions (Nocedal & Wright,
Numerical Optimization, 2nd ed., eq. 3.7, algorithms 3.5 and 3.6):

    f(x + t·d) ≤ f(x) + c1·t·⟨g, d⟩                 (sufficient decrease, c1 = 1e-4)
    |⟨g(x + t·d), d⟩| ≤ −c2·⟨g, d⟩                   (curvature, c2 = 0.9)

First t grows (cubic extrapolation) until an interval brackets such a point, then the interval
shrinks (cubic interpolation, "zoom"). Every comparison and every scalar is torch's, in its order.
"""


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic through (x1, f1) and (x2, f2) with slopes g1, g2, clamped to bounds
    (the interval's own by default); the bounds' midpoint when the cubic has no minimum (torch's,
    from Torch7's polyinterp.lua)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = d2_square.sqrt()
        if x1 <= x2:  # x2 is the farther point: min_pos = x2 − (x2 − x1)·(g2 + d2 − d1)/(g2 − g1 + 2·d2)
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def strong_wolfe(vectors, evaluate, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """(f, g, t, evaluations) at the accepted step length t along d from the params x. ``evaluate(x, t,
    d)`` returns f and g at x + t·d and leaves the params at x."""
    d_norm = vectors.abs_max(d)
    g = vectors.clone(g)
    f_new, g_new = evaluate(x, t, d)
    ls_func_evals = 1
    gtd_new = vectors.dot(g_new, d)

    # Bracketing: grow t until [t_prev, t] holds a point satisfying both conditions.
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):  # no sufficient decrease
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, vectors.clone(g_new)], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:  # both conditions hold at t
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:  # the slope turned positive: a minimum lies behind t
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, vectors.clone(g_new)], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)  # extrapolate into [t + 0.01·(t − t_prev), 10·t]
        max_step = t * 10
        tmp = t
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, vectors.clone(g_new), gtd_new
        f_new, g_new = evaluate(x, t, d)
        ls_func_evals += 1
        gtd_new = vectors.dot(g_new, d)
        ls_iter += 1
    if ls_iter == max_ls:  # out of evaluations: the interval from 0
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # Zoom: shrink the bracket around the point satisfying the conditions.
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:  # the bracket is too small to shrink
            break
        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # A t within 10% of an end of the bracket, twice in a row (or outside it), moves to 10% away
        # from the nearer end, so that the bracket keeps shrinking.
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = evaluate(x, t, d)
        ls_func_evals += 1
        gtd_new = vectors.dot(g_new, d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:  # t is the new high end
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = vectors.clone(g_new), gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:  # both conditions hold at t
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:  # the old low end becomes the high one
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new  # t is the new low end
            bracket_g[low_pos], bracket_gtd[low_pos] = vectors.clone(g_new), gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals
