"""Dynamic Gaussian Anchoring (DyGA): per-unit Gaussian mixtures whose means pull tokens toward attribute anchors."""

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import normalized_mutual_info_score

from .loading import StrictLoadingMixin

LOG_2PI = math.log(2 * math.pi)


@dataclass
class MixtureState:
    """Mixtures of `num_mixtures` independent fits in normalised space.

    means `(num_mixtures, K, dim)`; covariances `(num_mixtures, K, dim)` (diag) or `(num_mixtures, K, dim, dim)`
    (full); weights `(num_mixtures, K)`; active `(num_mixtures, K)` bool.
    """

    means: torch.Tensor
    covariances: torch.Tensor
    weights: torch.Tensor
    active: torch.Tensor

    def select(self, take: torch.Tensor, other: "MixtureState") -> "MixtureState":
        """Per mixture, `other` where `take` `(num_mixtures,)` is True, else self."""

        def pick(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return torch.where(take.view(-1, *([1] * (mine.ndim - 1))), theirs, mine)

        return MixtureState(*(pick(a, b) for a, b in zip(self.astuple(), other.astuple())))

    @property
    def diagonal(self) -> bool:
        return self.covariances.ndim == 3

    def astuple(self) -> tuple[torch.Tensor, ...]:
        return (self.means, self.covariances, self.weights, self.active)

    def clone(self) -> "MixtureState":
        return MixtureState(*(t.clone() for t in self.astuple()))

    @staticmethod
    def cat(states: list["MixtureState"]) -> "MixtureState":
        return MixtureState(*(torch.cat(parts) for parts in zip(*(s.astuple() for s in states))))

    def chunk(self, num_chunks: int) -> list["MixtureState"]:
        return [MixtureState(*parts) for parts in zip(*(t.chunk(num_chunks) for t in self.astuple()))]


class DyGAAnchorer(StrictLoadingMixin, ModelMixin, ConfigMixin):
    """
    Dynamic Gaussian Anchoring: one Gaussian mixture per latent unit over that unit's token features, with a dynamic
    number of components, whose means serve as anchors that tokens are pulled toward.

    `fit(tokens)` on `(num_samples, num_units, unit_dim)` standardises each unit's features (statistics stored),
    seeds `init_components` components by k-means++, and alternates EM with structure moves, vectorised over units
    and components: components lighter than `min_weight` are pruned; then, per unit, splitting its most spread-out
    component and merging its two closest components are both tried, and the move is kept only if it lowers that
    unit's BIC. A unit stops when neither move helps; it never exceeds `max_components`. Everything is deterministic
    under `seed`, and identical inputs give identical state on every rank.

    All state lives in buffers of fixed shape (`max_components` slots, an `active` mask), so the anchorer saves and
    loads with `save_pretrained` / `from_pretrained` like any diffusers model.

    Args:
        num_units (`int`): number of latent units.
        unit_dim (`int`): dimension of each unit's token.
        max_components (`int`): upper bound on components per unit (buffer size).
        init_components (`int`): components each unit starts from.
        covariance_type (`str`): `"diag"` or `"full"`: the covariances of the components in token space.
        fit_space (`str`, defaults to `"tokens"`): where the number of components is searched. `"tokens"`: a mixture
            over the unit's standardised `unit_dim` features. `"principal"`: a mixture over the projection of those
            features on their first principal direction (1-d), whose components then give the token-space means and
            covariances by their responsibilities. A unit's tokens are a smooth function of one scalar, so they lie on
            a curve; in `unit_dim` dimensions BIC covers a curve with ever more Gaussians, on the line it counts the
            clusters along it.
        selection_criterion (`str`, defaults to `"bic"`): what a number of components must lower: `"bic"` (fit of the
            density) or `"icl"` (BIC plus twice the entropy of the assignments, which also asks the components to be
            apart: a skewed cluster stays one component instead of two overlapping ones).
        structure (`str`, defaults to `"search"`): how the number of components is found. `"search"`: ours, as above.
            `"official"`: the official code's rules (Jun et al., `DyGA.py`), with its random draws seeded: per unit,
            `init_components` components started at random samples with identity covariances, a fixed
            `max_iterations` EM iterations; then split rounds while fewer than `max_split_rounds` splits are done and
            fewer than `max_components` components exist: every component whose points (responsibility > 0.5) lie
            farther than `split_threshold` from their mean on average, or that a coin of probability
            `split_probability` picks, is replaced by a 2-component EM fit on its points; components with fewer than
            `min_component_points` points are pruned; a final `max_iterations` of EM. Features are normalised to
            `(x - max) / (max - min)` per unit, as there. The official code removes a split component by index while
            the indices of the others still to be split shift; here components keep their slots, so the chosen ones
            are split. There, a round in which no chosen component has two points of its own repeats forever; here it
            ends the splitting. Use with `covariance_type="full"`, `init_components=8`, `max_components=32`,
            `max_iterations=30` for the official setting.
        lambda_mode (`str`): `"adaptive"` (the paper's `lambda_value * exp(-mean |(c - mu) / c|)`, computed per token
            so results do not depend on batch composition, not differentiated), `"batch"` (the official form: one
            lambda for the whole batch, the mean taken over every unit and entry with `c + 1e-6` as the denominator,
            differentiated) or `"fixed"` (`lambda_value`).
        lambda_value (`float`): the fixed lambda, or the scale of the adaptive one (paper: 0.1).
        min_weight (`float`): components with less mixture weight are pruned.
        variance_floor (`float`): added to every variance in the normalised space, so collapsed units and
            single-point components fit.
        max_iterations (`int`): EM iterations per structure round (and for the final refit on all samples).
        proposal_iterations (`int`): EM iterations given to a split or merge proposal before it is scored.
        tolerance (`float`): EM stops when the mean log-likelihood per sample changes less than this.
        max_fit_samples (`int`): structure search runs on at most this many samples (a seeded subset); the final EM
            uses all of them.
        seed (`int`): seed of the subset and of the k-means++ initialisation (of every random draw in `"official"`).
        split_threshold, split_probability, max_split_rounds, min_component_points: the `"official"` split and prune
            rules (0.5, 0.5, 3 and 10 there).
    """

    @register_to_config
    def __init__(
        self,
        num_units: int = 20,
        unit_dim: int = 32,
        max_components: int = 10,
        init_components: int = 4,
        covariance_type: str = "diag",
        fit_space: str = "tokens",
        selection_criterion: str = "bic",
        lambda_mode: str = "adaptive",
        lambda_value: float = 0.1,
        min_weight: float = 0.01,
        variance_floor: float = 1e-4,
        max_iterations: int = 100,
        proposal_iterations: int = 10,
        tolerance: float = 1e-3,
        max_fit_samples: int = 20000,
        seed: int = 0,
        structure: str = "search",
        split_threshold: float = 0.5,
        split_probability: float = 0.5,
        max_split_rounds: int = 3,
        min_component_points: int = 10,
    ):
        super().__init__()
        if covariance_type not in ("diag", "full"):
            raise ValueError(f"covariance_type must be 'diag' or 'full', got {covariance_type!r}.")
        if fit_space not in ("tokens", "principal"):
            raise ValueError(f"fit_space must be 'tokens' or 'principal', got {fit_space!r}.")
        if selection_criterion not in ("bic", "icl"):
            raise ValueError(f"selection_criterion must be 'bic' or 'icl', got {selection_criterion!r}.")
        if lambda_mode not in ("adaptive", "batch", "fixed"):
            raise ValueError(f"lambda_mode must be 'adaptive', 'batch' or 'fixed', got {lambda_mode!r}.")
        if structure not in ("search", "official"):
            raise ValueError(f"structure must be 'search' or 'official', got {structure!r}.")
        if structure == "official" and fit_space != "tokens":
            raise ValueError("structure='official' fits the tokens; it takes fit_space='tokens'.")
        if not 1 <= init_components <= max_components:
            raise ValueError(f"Need 1 <= init_components ({init_components}) <= max_components ({max_components}).")
        covariance_shape = (unit_dim,) if covariance_type == "diag" else (unit_dim, unit_dim)
        self.register_buffer("feature_mean", torch.zeros(num_units, unit_dim))
        self.register_buffer("feature_scale", torch.ones(num_units, unit_dim))
        self.register_buffer("means", torch.zeros(num_units, max_components, unit_dim))
        self.register_buffer("covariances", torch.ones(num_units, max_components, *covariance_shape))
        self.register_buffer("weights", torch.zeros(num_units, max_components))
        self.register_buffer("active", torch.zeros(num_units, max_components, dtype=torch.bool))
        self.register_buffer("fitted", torch.tensor(False))
        if fit_space == "principal":
            self.register_buffer("principal_axis", torch.zeros(num_units, unit_dim))
            self.register_buffer("principal_means", torch.zeros(num_units, max_components))
            self.register_buffer("principal_variances", torch.ones(num_units, max_components))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @property
    def num_components(self) -> torch.Tensor:
        """`(num_units,)` number of active components per unit."""
        return self.active.sum(dim=1)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        expected = (self.config.num_units, self.config.unit_dim)
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
            raise ValueError(
                f"DyGAAnchorer expects tokens of shape (batch, {expected[0]}, {expected[1]}) "
                f"(num_units, unit_dim), got {tuple(tokens.shape)}."
            )
        if not torch.isfinite(tokens).all():
            raise ValueError("DyGAAnchorer got NaN or infinite token features.")

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("DyGAAnchorer is not fitted yet: call `fit(tokens)` before using it.")

    # ------------------------------------------------------------------ fitting

    @torch.no_grad()
    def fit(self, tokens: torch.Tensor) -> "DyGAAnchorer":
        """Fits the per-unit mixtures to `tokens` `(num_samples, num_units, unit_dim)`; returns self."""
        self.check_tokens(tokens)
        if tokens.shape[0] < 2:
            raise ValueError(f"DyGAAnchorer.fit needs at least 2 samples, got {tokens.shape[0]}.")
        features = tokens.detach().to(dtype=torch.float32)
        if self.config.structure == "official":
            largest, smallest = features.amax(dim=(0, 2)), features.amin(dim=(0, 2))
            mean = largest[:, None].expand_as(features[0]).clone()
            scale = (largest - smallest + 1e-6)[:, None].expand_as(features[0]).clone()
        else:
            mean = features.mean(dim=0)
            std = features.std(dim=0)
            scale = torch.where(std > 1e-8 * (1.0 + mean.abs()), std, torch.ones_like(std))
        normalised = ((features - mean) / scale).transpose(0, 1).contiguous()
        diagonal = self.config.covariance_type == "diag"

        if self.config.structure == "official":
            generator = torch.Generator(device=normalised.device).manual_seed(self.config.seed)
            state = MixtureState.cat([self._official(unit[None], generator, diagonal) for unit in normalised])
        elif self.config.fit_space == "tokens":
            state = self._search(normalised, diagonal)
        else:
            axis = self._principal_axis(normalised)
            projected = torch.bmm(normalised, axis[..., None])
            line = self._sweep(projected)
            responsibilities = torch.softmax(self._log_prob(projected, line), dim=2)
            state = self._m_step(normalised, normalised.square(), responsibilities, line.active, diagonal)
            state.weights = line.weights
            self.principal_axis.copy_(axis.to(self.principal_axis.dtype))
            self.principal_means.copy_(line.means[..., 0].to(self.principal_means.dtype))
            self.principal_variances.copy_(line.covariances[..., 0].to(self.principal_variances.dtype))

        dtype = self.means.dtype
        self.feature_mean.copy_(mean.to(dtype))
        self.feature_scale.copy_(scale.to(dtype))
        self.means.copy_(state.means.to(dtype))
        self.covariances.copy_(state.covariances.to(dtype))
        self.weights.copy_(state.weights.to(dtype))
        self.active.copy_(state.active)
        self.fitted.fill_(True)
        return self

    @staticmethod
    def _principal_axis(normalised: torch.Tensor) -> torch.Tensor:
        """Each unit's first principal direction `(num_units, dim)` of its centred features `(num_units, num_samples,
        dim)`, scaled so that the projection has unit variance and signed so that its largest entry is positive."""
        covariance = torch.bmm(normalised.transpose(1, 2), normalised) / (normalised.shape[1] - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        direction = eigenvectors[..., -1]
        largest = direction.gather(1, direction.abs().argmax(1, keepdim=True))
        direction = direction * torch.where(largest < 0, -1.0, 1.0)
        return direction / eigenvalues[:, -1:].clamp_min(1e-12).sqrt()

    def _subset(self, points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """At most `max_fit_samples` of the `(num_units, num_samples, dim)` points, a seeded subset."""
        if points.shape[1] <= self.config.max_fit_samples:
            return points
        subset = torch.randperm(points.shape[1], generator=generator, device=points.device)
        return points[:, subset[: self.config.max_fit_samples]].contiguous()

    def _sweep(self, points: torch.Tensor) -> MixtureState:
        """On the line, `(num_units, num_samples, 1)` points: fits every number of components from 1 to
        `max_components` (means started at evenly spaced quantiles, EM, prune) and keeps, per unit, the one with the
        lowest BIC; returns the mixtures refitted on all points."""
        generator = torch.Generator(device=points.device).manual_seed(self.config.seed)
        search = self._subset(points, generator)
        num_units, num_samples, _ = search.shape
        max_k = self.config.max_components
        counts = torch.arange(1, max_k + 1, device=points.device)
        slots = torch.arange(max_k, device=points.device)
        active = (slots[None, :] < counts[:, None]).repeat_interleave(num_units, dim=0)
        quantiles = ((slots[None, :] + 0.5) / counts[:, None]).clamp(max=1.0)
        ranks = (quantiles * (num_samples - 1)).round().long()
        ordered = search[..., 0].sort(dim=1).values
        means = ordered[:, ranks].permute(1, 0, 2).reshape(-1, max_k, 1)
        spacing = search.var(dim=1)[None] / counts[:, None, None].square()
        covariances = (spacing + self.config.variance_floor).repeat_interleave(max_k, dim=1).reshape(-1, max_k, 1)
        weights = active.float() / active.sum(1, keepdim=True)
        state = MixtureState(means, covariances, weights, active)
        repeated = search.repeat(max_k, 1, 1)
        state, _ = self._em(repeated, state, self.config.max_iterations)
        state, _ = self._prune(state)
        state, log_prob = self._em(repeated, state, self.config.max_iterations)
        best = self._criterion(log_prob, state).view(max_k, num_units).argmin(0)
        take = best * num_units + torch.arange(num_units, device=points.device)
        state = MixtureState(*(t[take] for t in state.astuple()))
        state, _ = self._em(points, state, self.config.max_iterations)
        return state

    def _search(self, points: torch.Tensor, diagonal: bool) -> MixtureState:
        """The structure search on `(num_units, num_samples, dim)` points: EM, prune, then per unit a split or merge
        whenever it lowers BIC; returns the mixtures refitted on all points."""
        generator = torch.Generator(device=points.device).manual_seed(self.config.seed)
        search = self._subset(points, generator)
        state = self._initial_state(search, generator, diagonal)
        max_rounds = 2 * self.config.max_components
        settled = torch.zeros(self.config.num_units, dtype=torch.bool, device=points.device)
        for _ in range(max_rounds):
            state, pruned = self._prune(state)
            settled &= ~pruned
            state, log_prob = self._em(search, state, self.config.max_iterations)
            current_score = self._criterion(log_prob, state)
            proposals = MixtureState.cat([self._split(state), self._merge(state)])
            proposals, proposal_log_prob = self._em(search.repeat(2, 1, 1), proposals, self.config.proposal_iterations)
            split, merge = proposals.chunk(2)
            split_score, merge_score = self._criterion(proposal_log_prob, proposals).chunk(2)
            take_split = (split_score < current_score) & (split_score <= merge_score) & ~settled
            take_merge = (merge_score < current_score) & (merge_score < split_score) & ~settled
            settled |= ~(take_split | take_merge)
            state = state.select(take_split, split).select(take_merge, merge)
            if settled.all():
                break
        state, _ = self._prune(state)
        state, _ = self._em(points, state, self.config.max_iterations)
        return state

    def _official(self, points: torch.Tensor, generator: torch.Generator, diagonal: bool) -> MixtureState:
        """The official rules (see `structure`) on one unit's points `(1, num_samples, dim)`. `log_prob` always
        belongs to the current `state`: it is recomputed after every split and reused until the next."""
        config = self.config
        state = self._random_start(points, config.init_components, generator, diagonal)
        state, log_prob = self._em(points, state, config.max_iterations, tolerance=0.0)
        splits = 0
        while splits < config.max_split_rounds and int(state.active.sum()) < config.max_components:
            members = torch.softmax(log_prob, dim=2)[0] > 0.5
            coins = torch.rand(config.max_components, generator=generator, device=points.device) < config.split_probability
            chosen = state.active[0] & ((self._member_spread(points[0], members) > config.split_threshold) | coins)
            if not chosen.any():
                break
            split_this_round = False
            for slot in chosen.nonzero()[:, 0].tolist():
                free = (~state.active[0]).nonzero()[:, 0]
                if len(free) == 0:
                    break
                members = torch.softmax(log_prob, dim=2)[0, :, slot] > 0.5
                if int(members.sum()) < 2:
                    continue
                split_this_round = True
                cluster = points[:, members]
                children = self._random_start(cluster, 2, generator, diagonal, max_components=2)
                children, _ = self._em(cluster, children, config.max_iterations, tolerance=0.0)
                for target, child in ((slot, 0), (int(free[0]), 1)):
                    state.means[0, target] = children.means[0, child]
                    state.covariances[0, target] = children.covariances[0, child]
                    state.weights[0, target] = children.weights[0, child] / 2
                    state.active[0, target] = True
                state.weights = state.weights / state.weights.sum(1, keepdim=True)
                log_prob = self._log_prob(points, state)
                spread = self._member_spread(points[0], torch.softmax(log_prob, dim=2)[0] > 0.5)
                if (spread[state.active[0]] <= config.split_threshold).all():
                    break
                splits += 1
            if not split_this_round:
                break
        counts = torch.softmax(log_prob, dim=2)[0].sum(0)
        keep = state.active & (counts >= config.min_component_points)[None]
        keep[0, counts.masked_fill(~state.active[0], -1).argmax()] = True
        weights = torch.where(keep, state.weights, torch.zeros_like(state.weights))
        state = MixtureState(state.means, state.covariances, weights / weights.sum(1, keepdim=True), keep)
        state, _ = self._em(points, state, config.max_iterations, tolerance=0.0)
        return state

    @staticmethod
    def _member_spread(points: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Mean distance of each component's member points `(num_samples, dim)` to their mean, `(K,)`; members
        `(num_samples, K)` bool. A component without members scores 0."""
        mask = members.float()
        count = mask.sum(0)
        centre = (mask.T @ points) / count.clamp_min(1)[:, None]
        distance = torch.cdist(points, centre)
        return (mask * distance).sum(0) / count.clamp_min(1)

    def _random_start(
        self,
        points: torch.Tensor,
        num_components: int,
        generator: torch.Generator,
        diagonal: bool,
        max_components: int | None = None,
    ) -> MixtureState:
        """`num_components` means at random samples of `(1, num_samples, dim)` points, identity covariances, equal
        weights, in `max_components` slots (default: the config's)."""
        _, num_samples, dim = points.shape
        slots = max_components or self.config.max_components
        chosen = torch.randperm(num_samples, generator=generator, device=points.device)[:num_components]
        means = points.new_zeros(1, slots, dim)
        means[0, : len(chosen)] = points[0, chosen]
        covariances = points.new_ones(1, slots, dim) if diagonal else torch.eye(dim, device=points.device).repeat(1, slots, 1, 1)
        active = torch.zeros(1, slots, dtype=torch.bool, device=points.device)
        active[0, : len(chosen)] = True
        return MixtureState(means, covariances, active.float() / len(chosen), active)

    def _initial_state(self, points: torch.Tensor, generator: torch.Generator, diagonal: bool) -> MixtureState:
        """k-means++ seeding of `init_components` means per unit; points `(num_units, num_samples, dim)`."""
        num_units, num_samples, dim = points.shape
        centers = [points[torch.arange(num_units), torch.randint(num_samples, (num_units,), generator=generator)]]
        for _ in range(1, self.config.init_components):
            stacked = torch.stack(centers, dim=1)
            sq_dist = torch.cdist(points, stacked).square().amin(dim=2)
            probs = sq_dist + 1e-12
            choice = torch.multinomial(probs / probs.sum(dim=1, keepdim=True), 1, generator=generator).squeeze(1)
            centers.append(points[torch.arange(num_units), choice])

        max_k = self.config.max_components
        means = points.new_zeros(num_units, max_k, dim)
        means[:, : len(centers)] = torch.stack(centers, dim=1)
        variance = points.var(dim=1) + self.config.variance_floor
        if diagonal:
            covariances = variance[:, None, :].expand(num_units, max_k, dim).clone()
        else:
            covariances = torch.diag_embed(variance)[:, None].expand(num_units, max_k, dim, dim).clone()
        active = torch.zeros(num_units, max_k, dtype=torch.bool, device=points.device)
        active[:, : self.config.init_components] = True
        weights = active.float() / self.config.init_components
        return MixtureState(means, covariances, weights, active)

    def _log_prob(self, points: torch.Tensor, state: MixtureState, squares: torch.Tensor | None = None) -> torch.Tensor:
        """Log of weight times density, `(num_mixtures, num_samples, K)`, for points `(num_mixtures, num_samples,
        dim)`; inactive components are -inf. `squares` is `points.square()` when the caller has it."""
        if state.diagonal:
            precision = state.covariances.reciprocal()
            squares = points.square() if squares is None else squares
            quadratic = (
                torch.bmm(squares, precision.transpose(1, 2))
                - 2 * torch.bmm(points, (state.means * precision).transpose(1, 2))
                + (state.means.square() * precision).sum(-1)[:, None, :]
            )
            log_det = state.covariances.log().sum(-1)
        else:
            cholesky = torch.linalg.cholesky(state.covariances)
            eye = torch.eye(points.shape[-1], device=points.device, dtype=points.dtype)
            whitening = torch.linalg.solve_triangular(cholesky, eye.expand_as(cholesky), upper=False)
            whitened_means = torch.einsum("ukij,ukj->uki", whitening, state.means)
            chunk = max(1, 2**24 // max(1, whitening.shape[0] * whitening.shape[1] * points.shape[-1]))
            quadratic = torch.cat(
                [
                    (torch.einsum("ukij,umj->umki", whitening, part) - whitened_means[:, None]).square().sum(-1)
                    for part in points.split(chunk, dim=1)
                ],
                dim=1,
            )
            log_det = 2 * torch.diagonal(cholesky, dim1=-2, dim2=-1).log().sum(-1)
        log_density = -0.5 * (quadratic + log_det[:, None, :] + points.shape[-1] * LOG_2PI)
        log_weights = torch.where(state.active, state.weights.clamp_min(1e-30).log(), -torch.inf)
        return log_density + log_weights[:, None, :]

    def _em(
        self, points: torch.Tensor, state: MixtureState, iterations: int, tolerance: float | None = None
    ) -> tuple[MixtureState, torch.Tensor]:
        """Runs EM on each mixture's points `(num_mixtures, num_samples, dim)`, stopping early when the mean
        log-likelihood moves less than `tolerance` (default: the config's; 0: never); returns the state and its
        `_log_prob` of the points, `(num_mixtures, num_samples, K)`."""
        tolerance = self.config.tolerance if tolerance is None else tolerance
        num_samples = points.shape[1]
        squares = points.square()
        previous = None
        for _ in range(iterations):
            log_prob = self._log_prob(points, state, squares)
            log_likelihood = torch.logsumexp(log_prob, dim=2).sum(1)
            if previous is not None and ((log_likelihood - previous).abs() / num_samples).max() < tolerance:
                return state, log_prob
            previous = log_likelihood
            state = self._m_step(points, squares, torch.softmax(log_prob, dim=2), state.active, state.diagonal)
        return state, self._log_prob(points, state, squares)

    def _m_step(
        self, points: torch.Tensor, squares: torch.Tensor, resp: torch.Tensor, active: torch.Tensor, diagonal: bool
    ) -> MixtureState:
        """Points and squares `(num_mixtures, num_samples, dim)`, responsibilities `(num_mixtures, num_samples, K)`.
        Full covariances are the weighted scatter of the points about each mean, centred before the product: the
        second moment minus the squared mean loses eigenvalues below the variance floor to rounding when the points
        lie far from zero relative to their spread (an untrained ReLU token head), and Cholesky then fails."""
        mass = resp.sum(1) + 1e-10
        resp_t = resp.transpose(1, 2)
        means = torch.bmm(resp_t, points) / mass[..., None]
        floor = self.config.variance_floor
        if diagonal:
            second = torch.bmm(resp_t, squares) / mass[..., None]
            covariances = (second - means.square()).clamp_min(0.0) + floor
        else:
            chunk = max(1, 2**24 // max(1, resp.shape[0] * resp.shape[2] * points.shape[-1]))
            scatter = 0.0
            for r, p in zip(resp.split(chunk, dim=1), points.split(chunk, dim=1)):
                centred = p[:, :, None, :] - means[:, None]
                scatter = scatter + torch.einsum("umkd,umke->ukde", r[..., None] * centred, centred)
            eye = torch.eye(points.shape[-1], device=points.device, dtype=points.dtype)
            covariances = scatter / mass[..., None, None] + floor * eye
        weights = torch.where(active, mass / points.shape[1], torch.zeros_like(mass))
        return MixtureState(means, covariances, weights, active)

    def _criterion(self, log_prob: torch.Tensor, state: MixtureState) -> torch.Tensor:
        """BIC, or ICL (BIC plus twice the entropy of the assignments), of each mixture, `(num_mixtures,)`, from its
        `_log_prob` `(num_mixtures, num_samples, K)`. Lower is better."""
        num_samples, dim = log_prob.shape[1], state.means.shape[-1]
        per_component = dim + (dim if state.diagonal else dim * (dim + 1) // 2) + 1
        num_params = state.active.sum(1) * per_component - 1
        log_likelihood = torch.logsumexp(log_prob, dim=2)
        score = -2 * log_likelihood.sum(1) + num_params * math.log(num_samples)
        if self.config.selection_criterion == "icl":
            log_resp = torch.where(state.active[:, None, :], log_prob - log_likelihood[..., None], 0.0)
            score = score - 2 * (log_resp.exp() * log_resp).sum((1, 2))
        return score

    def _prune(self, state: MixtureState) -> tuple[MixtureState, torch.Tensor]:
        """Deactivates components lighter than `min_weight` (never a unit's heaviest); returns which units changed."""
        heaviest = torch.nn.functional.one_hot(state.weights.argmax(1), state.weights.shape[1]).bool()
        keep = state.active & ((state.weights >= self.config.min_weight) | heaviest)
        pruned = (keep != state.active).any(1)
        weights = torch.where(keep, state.weights, torch.zeros_like(state.weights))
        weights = weights / weights.sum(1, keepdim=True)
        return MixtureState(state.means, state.covariances, weights, keep), pruned

    def _spread(self, state: MixtureState) -> torch.Tensor:
        """Total variance of each component, `(num_mixtures, K)`."""
        if state.diagonal:
            return state.covariances.sum(-1)
        return torch.diagonal(state.covariances, dim1=-2, dim2=-1).sum(-1)

    def _split(self, state: MixtureState) -> MixtureState:
        """Per unit, splits its most spread-out component along its main axis into a free slot."""
        proposal = state.clone()
        units = torch.arange(state.means.shape[0], device=state.means.device)
        has_room = (~state.active).any(1)
        target = torch.where(state.active, self._spread(state), -torch.inf).argmax(1)
        free = (~state.active).float().argmax(1)
        if state.diagonal:
            variances = state.covariances[units, target]
            axis = torch.nn.functional.one_hot(variances.argmax(1), variances.shape[1]).to(variances.dtype)
            offset = axis * variances.amax(1, keepdim=True).sqrt()
        else:
            eigenvalues, eigenvectors = torch.linalg.eigh(state.covariances[units, target])
            offset = eigenvectors[..., -1] * eigenvalues[:, -1:].clamp_min(0).sqrt()
        center = state.means[units, target]
        half_weight = state.weights[units, target] / 2
        rows = units[has_room]
        proposal.means[rows, target[has_room]] = (center - offset)[has_room]
        proposal.means[rows, free[has_room]] = (center + offset)[has_room]
        proposal.covariances[rows, free[has_room]] = state.covariances[rows, target[has_room]]
        proposal.weights[rows, target[has_room]] = half_weight[has_room]
        proposal.weights[rows, free[has_room]] = half_weight[has_room]
        proposal.active[rows, free[has_room]] = True
        return proposal

    def _merge(self, state: MixtureState) -> MixtureState:
        """Per unit, merges its two closest components (distance scaled by their spread) by moment matching."""
        proposal = state.clone()
        num_units, max_k, _ = state.means.shape
        spread = self._spread(state)
        distance = torch.cdist(state.means, state.means).square() / (spread[:, :, None] + spread[:, None, :])
        valid = state.active[:, :, None] & state.active[:, None, :]
        valid &= torch.ones(max_k, max_k, dtype=torch.bool, device=valid.device).triu(1)
        distance = torch.where(valid, distance, torch.inf).flatten(1)
        can_merge = torch.isfinite(distance).any(1)
        pair = distance.argmin(1)
        keep, drop = pair // max_k, pair % max_k
        units = torch.arange(num_units, device=state.means.device)[can_merge]
        keep, drop = keep[can_merge], drop[can_merge]

        w_a, w_b = state.weights[units, keep], state.weights[units, drop]
        total = (w_a + w_b).clamp_min(1e-30)
        mu_a, mu_b = state.means[units, keep], state.means[units, drop]
        merged_mean = (w_a[:, None] * mu_a + w_b[:, None] * mu_b) / total[:, None]
        shift_a, shift_b = mu_a - merged_mean, mu_b - merged_mean
        if state.diagonal:
            merged_cov = w_a[:, None] * (state.covariances[units, keep] + shift_a.square())
            merged_cov = merged_cov + w_b[:, None] * (state.covariances[units, drop] + shift_b.square())
            merged_cov = merged_cov / total[:, None]
        else:
            outer = lambda shift: shift[:, :, None] * shift[:, None, :]  # noqa: E731
            merged_cov = w_a[:, None, None] * (state.covariances[units, keep] + outer(shift_a))
            merged_cov = merged_cov + w_b[:, None, None] * (state.covariances[units, drop] + outer(shift_b))
            merged_cov = merged_cov / total[:, None, None]
        proposal.means[units, keep] = merged_mean
        proposal.covariances[units, keep] = merged_cov
        proposal.weights[units, keep] = total
        proposal.weights[units, drop] = 0.0
        proposal.active[units, drop] = False
        return proposal

    # ------------------------------------------------------------------ using a fitted anchorer

    def _normalise(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        self.check_tokens(tokens)
        return (tokens.to(self.means.dtype) - self.feature_mean) / self.feature_scale

    def _state(self) -> MixtureState:
        return MixtureState(self.means, self.covariances, self.weights, self.active)

    @torch.no_grad()
    def assign(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, num_units, unit_dim)` tokens -> `(batch, num_units)` id of each token's most likely component."""
        points = self._normalise(tokens).transpose(0, 1)
        if self.config.fit_space == "tokens":
            return self._log_prob(points, self._state()).argmax(dim=2).T
        projected = torch.bmm(points, self.principal_axis[..., None])
        line = MixtureState(self.principal_means[..., None], self.principal_variances[..., None], self.weights, self.active)
        return self._log_prob(projected, line).argmax(dim=2).T

    @torch.no_grad()
    def anchor_dependence(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(num_samples, num_units, unit_dim)` tokens -> `(num_units, num_units)` normalised mutual information of the
        units' anchor assignments over the samples (1 on the diagonal of a unit that takes two anchors or more).

        Units holding independent attributes take their anchors independently (near 0). A unit whose assignments
        are constant over the samples informs about nothing and depends on no other unit (0, and 0 on its diagonal).
        """
        assignments = self.assign(tokens).cpu().numpy()
        num_units = assignments.shape[1]
        varied = [len(np.unique(assignments[:, unit])) > 1 for unit in range(num_units)]
        dependence = torch.zeros(num_units, num_units)
        for first in range(num_units):
            for second in range(first, num_units):
                if varied[first] and varied[second]:
                    score = normalized_mutual_info_score(assignments[:, first], assignments[:, second])
                    dependence[first, second] = dependence[second, first] = score
        return dependence

    @torch.no_grad()
    def unit_groups(self, tokens: torch.Tensor, threshold: float = 0.25) -> list[list[int]]:
        """Units that hold one attribute together, found from the anchors alone (no labels; ours, not the paper's).

        A unit-variance, decorrelated code often spreads one attribute over two units (three hues at the corners of
        a triangle in two units): taken alone, either unit moves the attribute to a value neither image has. Such
        units take their anchors dependently. Two units are linked when the normalised mutual information of their
        anchor assignments over `tokens` `(num_samples, num_units, unit_dim)` (a few hundred images' worth) is at
        least `threshold`; a group is a connected set of links. Returns every unit in exactly one group, groups
        ordered by their first unit; swapping a whole group is the edit that moves its attribute.
        """
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
        if tokens.shape[0] < 2:
            raise ValueError(f"unit_groups needs at least 2 samples, got {tokens.shape[0]}.")
        linked = (self.anchor_dependence(tokens) >= threshold).numpy()
        _, labels = connected_components(linked, directed=False)
        groups: dict[int, list[int]] = {}
        for unit, label in enumerate(labels):
            groups.setdefault(int(label), []).append(unit)
        return sorted(groups.values())

    @torch.no_grad()
    def anchors(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, num_units, unit_dim)` tokens -> the means of their assigned components, in the tokens' space."""
        components = self.assign(tokens)
        means = torch.gather(self.means, 1, components.T[..., None].expand(-1, -1, self.config.unit_dim))
        return (means.transpose(0, 1) * self.feature_scale + self.feature_mean).to(tokens.dtype)

    def align(self, tokens: torch.Tensor, lambda_value: float | None = None) -> torch.Tensor:
        """Pulls tokens `(batch, num_units, unit_dim)` toward their anchors: `lam * anchor + (1 - lam) * tokens`.

        `lam` is `(batch, num_units, 1)` in the adaptive mode and is not differentiated; in the batch mode it is one
        scalar for the whole batch, differentiated through `tokens`, as in the official code.
        `lambda_value` overrides the configured value for this call.
        """
        anchors = self.anchors(tokens)
        scale = self.config.lambda_value if lambda_value is None else lambda_value
        if self.config.lambda_mode == "fixed":
            lam = torch.full_like(tokens[..., :1], scale)
        elif self.config.lambda_mode == "batch":
            lam = scale * torch.exp(-((tokens - anchors) / (tokens + 1e-6)).abs().mean())
        else:
            with torch.no_grad():
                relative = ((tokens - anchors) / tokens.abs().clamp_min(1e-6)).abs().mean(-1, keepdim=True)
                lam = scale * torch.exp(-relative)
        return lam * anchors + (1 - lam) * tokens

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws `(num_samples, num_units, unit_dim)` tokens from the fitted mixtures, each unit independently."""
        self._check_fitted()
        num_units, _, dim = self.means.shape
        device = self.means.device
        units = torch.arange(num_units, device=device)[:, None]
        weights = self.weights.float().cpu()
        components = torch.multinomial(weights, num_samples, replacement=True, generator=generator).to(device)
        noise = torch.randn(num_units, num_samples, dim, generator=generator).to(device=device, dtype=self.means.dtype)
        means = self.means[units, components]
        if self.config.covariance_type == "diag":
            draws = means + noise * self.covariances[units, components].sqrt()
        else:
            cholesky = torch.linalg.cholesky(self.covariances[units, components])
            draws = means + torch.einsum("unij,unj->uni", cholesky, noise)
        return (draws.transpose(0, 1) * self.feature_scale + self.feature_mean)
