"""Row generation for the simulator: sample impressions from the fixed world, apply the ground truth, render.

`ChunkGenerator(world).generate(start_row, n, rng)` returns one `Chunk`: a pyarrow table in exactly the
column order / token format of feature_specs/synthetic.yaml plus the truth arrays (p_true, additive logit).
All work is vectorised numpy on n rows; per-user `|`-joined sequences are pre-rendered once and gathered
with `take`, so a 100k-row chunk costs a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.simulator.world import (APP_VERSIONS, CREATIVE_TOKENS, FORMAT_TOKENS, GENDER_TOKENS, LANDING_TOKENS,
                                     N_ADS, N_CATES, N_PAGE_CATES, N_PIDS, N_REGIONS, NETWORK_TOKENS, OS_TOKENS,
                                     TARGET_CTR, World, sample_within)

PID_P = np.array([.3, .2, .15, .1, .1, .05, .05, .05])
PID_BASE_POSITION = np.array([1, 1, 2, 3, 1, 4, 2, 5])
HOUR_P = np.array([2, 1, 1, .5, .5, 1, 2, 4, 6, 6, 6, 7, 8, 7, 6, 6, 6, 7, 8, 9, 10, 10, 8, 4], dtype=np.float64)
HOUR_P /= HOUR_P.sum()
TARGETED_SHARE = 0.3
CHUNK_ROWS = 100_000  # rows per generated chunk (fixed: the per-chunk seeds, hence the bytes, depend on it)


@dataclass(frozen=True)
class Impressions:
    """Entity indices and context of n impressions (the inputs of the truth model)."""

    user: np.ndarray
    ad: np.ndarray
    pid: np.ndarray
    position: np.ndarray
    hour: np.ndarray
    weekday: np.ndarray
    network: np.ndarray
    page_cate: np.ndarray
    region: np.ndarray
    session_len: np.ndarray


@dataclass(frozen=True)
class Chunk:
    table: pa.Table          # the raw log rows (spec column order)
    p_true: np.ndarray       # ground-truth click probability
    additive: np.ndarray     # the additive (per-feature) part of the true logit, b0 included
    clicks: np.ndarray       # 0/1


def _dict_column(index: np.ndarray, tokens: tuple[str, ...] | list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(index.astype(np.int32)), pa.array(list(tokens)))


def _with_marker(index: np.ndarray, tokens: list[str], missing: np.ndarray, marker: str) -> pa.DictionaryArray:
    """A categorical whose missing rows read as `marker` ("" or "NULL")."""
    return _dict_column(np.where(missing, len(tokens), index), [*tokens, marker])


def _joined(rows: np.ndarray) -> pa.Array:
    """Per-user `|`-joined token strings of a padded id matrix (-1 = padding)."""
    valid = rows >= 0
    offsets = np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int32)
    tokens = pa.array(rows[valid]).cast(pa.string())
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), tokens), "|")


class ChunkGenerator:
    """Generates row chunks from a world; holds the per-world precomputations (CDFs, rendered sequences)."""

    def __init__(self, world: World):
        self.world = world
        u, a = world.users, world.ads
        self._user_cdf = np.cumsum(u.weight)
        self._ad_cdf = np.cumsum(a.weight)
        log_price = np.log(a.price)
        self._price_z = (log_price - log_price.mean()) / log_price.std()
        log_act = np.log1p(u.activity)
        self._activity_z = (log_act - log_act.mean()) / log_act.std()

    @cached_property
    def _hist_cate(self) -> pa.Array:
        return _joined(self.world.users.hist_cate)

    @cached_property
    def _hist_brand(self) -> pa.Array:
        return _joined(self.world.users.hist_brand)

    def impressions(self, n: int, rng: np.random.Generator) -> Impressions:
        w = self.world
        user = np.minimum(np.searchsorted(self._user_cdf, rng.random(n)), len(self._user_cdf) - 1)
        ad = np.minimum(np.searchsorted(self._ad_cdf, rng.random(n)), N_ADS - 1)
        fav = w.users.favourites[user, rng.integers(0, 3, n)]
        targeted = sample_within(w.ads.cate, w.ads.weight, N_CATES, fav, rng, ad)
        ad = np.where(rng.random(n) < TARGETED_SHARE, targeted, ad)
        pid = rng.choice(N_PIDS, n, p=PID_P)
        page = np.where(rng.random(n) < 0.6, w.page_of_cate[w.ads.cate[ad]], rng.integers(0, N_PAGE_CATES, n))
        return Impressions(
            user=user, ad=ad, pid=pid, position=np.clip(PID_BASE_POSITION[pid] + rng.geometric(0.5, n) - 1, 1, 10),
            hour=rng.choice(24, n, p=HOUR_P), weekday=rng.integers(0, 7, n),
            network=rng.choice(len(NETWORK_TOKENS), n, p=[.55, .3, .1, .05]), page_cate=page,
            region=np.where(rng.random(n) < 0.95, w.users.region[user], rng.integers(0, N_REGIONS, n)),
            session_len=np.round(np.exp(rng.normal(1.5, 0.8, n)), 1))

    def logits(self, imp: Impressions) -> tuple[np.ndarray, np.ndarray]:
        """(additive, interaction) parts of the ground-truth logit; b0 is in the additive part."""
        u, a, t = self.world.users, self.world.ads, self.world.truth
        c, k = a.cate[imp.ad], t.coef
        gender, age_level, cr = u.gender[imp.user], u.age_level[imp.user], a.creative[imp.ad]
        additive = (t.b0 + u.bias[imp.user] + a.bias[imp.ad] + t.cate_bias[c] + k["quality"] * a.quality[imp.ad]
                    + k["log_position"] * np.log(imp.position) + t.pid_effect[imp.pid] + t.creative_effect[cr]
                    + t.gender_effect[gender] + t.age_effect[age_level] + t.network_effect[imp.network]
                    + t.member_effect[u.member_level[imp.user]] + t.hour_effect[imp.hour]
                    + k["log_price_std"] * self._price_z[imp.ad] + k["log_activity_std"] * self._activity_z[imp.user])
        in_cate = (u.hist_cate[imp.user] == c[:, None]).any(1)
        in_brand = (u.hist_brand[imp.user] == a.brand[imp.ad][:, None]).any(1) & ~a.brand_missing[imp.ad]
        budget = k["budget_log_price_at_mean_power"] + k["budget_per_power_std"] * u.power[imp.user]
        interaction = (k["interest"] * np.einsum("ij,ij->i", u.interest[imp.user], t.cate_vec[c])
                       + k["hist_cate"] * in_cate + k["hist_brand"] * in_brand
                       + k["over_budget"] * (np.log(a.price[imp.ad]) > budget)
                       + t.hour_os[imp.hour, u.os[imp.user]] + t.age_creative[age_level, cr]
                       + t.pid_format[imp.pid, a.fmt[imp.ad]] + t.gender_cate[gender, c])
        return additive, interaction

    def generate(self, start_row: int, n: int, rng: np.random.Generator) -> Chunk:
        imp = self.impressions(n, rng)
        additive, interaction = self.logits(imp)
        p = 1.0 / (1.0 + np.exp(-(additive + interaction)))
        clicks = (rng.random(n) < p).astype(np.int64)
        row_missing = {c: rng.random(n) < r for c, r in (("network", .01), ("geo_region", .01),
                                                          ("app_version", .02), ("user_session_len", .02))}
        return Chunk(table=self.render(start_row, imp, clicks, row_missing), p_true=p, additive=additive, clicks=clicks)

    def render(self, start_row: int, imp: Impressions, clicks: np.ndarray, row_missing: dict[str, np.ndarray]) -> pa.Table:
        """The raw log columns, tokens as the spec's raw format (missing as "" or "NULL")."""
        u, a, us, ad = self.world.users, self.world.ads, imp.user, imp.ad
        miss = {k: v[us] for k, v in u.missing.items()}
        n = len(us)
        cols: dict[str, pa.Array] = {
            "req_id": pa.array(np.arange(start_row, start_row + n, dtype=np.int64)), "clk": pa.array(clicks),
            "user_id": pa.array(us), "u_gender": _with_marker(u.gender[us], list(GENDER_TOKENS), miss["u_gender"], ""),
            "u_age_level": _with_marker(u.age_level[us], [str(i + 1) for i in range(7)], miss["u_age_level"], "NULL"),
            "u_city": pa.array(u.city[us], mask=miss["u_city"]),
            "u_occupation": _with_marker(u.occupation[us], [str(i) for i in range(20)], miss["u_occupation"], "NULL"),
            "u_shopping_level": pa.array(u.shopping_level[us] + 1), "u_segment": pa.array(u.segment[us]),
            "u_device_brand": pa.array(u.device[us], mask=miss["u_device_brand"]),
            "u_member_level": pa.array(u.member_level[us]),
            "ad_id": pa.array(ad), "campaign_id": pa.array(a.campaign[ad]), "advertiser_id": pa.array(a.advertiser[ad]),
            "ad_cate": pa.array(a.cate[ad]), "ad_brand": pa.array(a.brand[ad], mask=a.brand_missing[ad]),
            "shop_id": pa.array(a.shop[ad]), "creative_type": _dict_column(a.creative[ad], CREATIVE_TOKENS),
            "ad_format": _dict_column(a.fmt[ad], FORMAT_TOKENS), "landing_type": _dict_column(a.landing[ad], LANDING_TOKENS),
            "pid": pa.array(imp.pid + 1), "hour": pa.array(imp.hour), "weekday": pa.array(imp.weekday + 1),
            "os": _dict_column(u.os[us], OS_TOKENS),
            "network": _with_marker(imp.network, list(NETWORK_TOKENS), row_missing["network"], "NULL"),
            "page_cate": pa.array(imp.page_cate), "geo_region": pa.array(imp.region, mask=row_missing["geo_region"]),
            "app_version": _with_marker(u.app_version[us], list(APP_VERSIONS), row_missing["app_version"], ""),
            "ad_price": pa.array(a.price[ad]), "ad_hist_ctr": pa.array(a.hist_ctr[ad], from_pandas=True),
            "ad_quality": pa.array(a.quality_obs[ad]), "ad_age_days": pa.array(a.age_days[ad]),
            "bid": pa.array(a.bid[ad]), "user_activity": pa.array(u.activity[us]), "user_age": pa.array(u.age[us]),
            "user_purchase_power": pa.array(u.power[us], mask=miss["user_purchase_power"]),
            "user_session_len": pa.array(imp.session_len, mask=row_missing["user_session_len"]),
            "ctx_position": pa.array(imp.position),
            "hist_cate": self._hist_cate.take(pa.array(us)), "hist_brand": self._hist_brand.take(pa.array(us)),
        }
        return pa.table(cols)


def calibrate(world: World, rows: int = 200_000) -> World:
    """Set b0 so the mean true click probability is TARGET_CTR (bisection on a fixed calibration sample)."""
    gen = ChunkGenerator(world)
    additive, interaction = gen.logits(gen.impressions(rows, np.random.default_rng(np.random.SeedSequence([world.seed, 2]))))
    z = additive + interaction - world.truth.b0
    lo, hi = -15.0, 5.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < TARGET_CTR else (lo, mid)
    return replace(world, truth=replace(world.truth, b0=float((lo + hi) / 2)))
