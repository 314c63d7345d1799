"""The simulator's fixed world: users, ads and the ground-truth click model's parameters, built from a seed.

Everything row-independent lives here as fixed-size numpy arrays (200k users x 100k ads, ~130 MB), so
generating rows (pipeline/simulator/rows.py) is constant-memory whatever the row count. The entity graph is
long-tailed like a real display-ad log:

  brand (30k, each with a home category) <- advertiser (15k) <- campaign (40k) <- ad (100k);
  ad popularity, campaign/advertiser/brand sizes and category sizes follow power laws (Zipf-like weights),
  users (200k) are sampled per impression proportionally to a log-normal activity, so at 1M rows ~172k users appear
  with 5.8 impressions each on average (median 4, 81 % with >= 2, some with hundreds).

Each user belongs to one of 12 latent segments and has 1-3 favourite categories; a K=8 interest vector
u = 0.8*centroid[segment] + 0.7*mean(catvec[favourites]) + N(0, 0.3) (centred over users). The behaviour
sequence (hist_cate / hist_brand, 0-20 past clicked ads, 8 % cold-start users with none) is drawn from the
favourites (70 %) and the segment's category taste (30 %), so hist tokens live in the ad_cate / ad_brand id
spaces and reveal the latent interest. 30 % of impressions are "targeted" (an ad from a favourite category).

Ground-truth logit (see `TruthModel`): z = additive + interaction, p = sigmoid(z), clk ~ Bernoulli(p).
  additive (per-feature main effects; what a wide/light additive model can learn):
    b0 (calibrated so the base CTR is ~3.5 %) + hidden user bias N(0, .25) + hidden ad bias N(0, .35)
    + category bias N(0, .3) + .35*ad quality - .45*log(position) + pid/creative/gender/age/network/member
    effects + hour-of-day diurnal curve - .12*std(log price) + .10*std(log activity).
  interaction (zero-marginal-ish nonlinear terms only crosses / a deep tower capture):
    interest   : 0.5 * (u . catvec[ad_cate])                   (latent dot product, ~0.4 logit std)
    hist_cate  : +0.65 if ad_cate is in the user's hist_cate   (sequence-membership)
    hist_brand : +0.45 if ad_brand is in the user's hist_brand
    price      : -0.9 if ad_price > the user's threshold exp(3.8 + 0.5*purchase_power_z)
    hour x os, age_level x creative_type, pid x ad_format, gender x ad_cate: double-centred random
    tables (std .35/.3/.3/.3), so they have no main effect for an additive model to absorb.
The hidden biases and the Bernoulli draw cap any model's AUC; the interaction terms are the
"booster-minus-light gap" Rocket Launching has to transfer. simulation.json records the realised
ground-truth AUC and the additive-only AUC (sigmoid of the additive part alone) of a run. Seed 0, 1M rows:
truth AUC 0.827, additive-only 0.707, base CTR 3.5 %. On 150k rows (30k held out) a fitted per-feature
logistic regression reaches ~0.71, the same model plus the truth's crosses ~0.77, the truth ~0.81
(tests/test_simulate.py). Note the hidden biases alone also open a truth-vs-fitted gap, so "the
interactions are real" is shown by the crosses lifting a fitted model, not by that gap.

Missing values (rendered by pipeline/simulator/rows.py): per user u_gender 3 % "", u_age_level 2 % "NULL",
u_city 4 % "", u_occupation 5 % "NULL", u_device_brand 2 % "", user_purchase_power 5 % ""; per ad ad_brand
3 % "" (unbranded, also dropped from hist_brand), ad_hist_ctr "" for ads younger than 3 days; per row
network 1 % "NULL", geo_region 1 % "", app_version 2 % "", user_session_len 2 % "". The truth always uses
the real (hidden) value, as a logging gap would not change the user's behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_USERS, N_ADS, N_CAMPAIGNS, N_ADVERTISERS = 200_000, 100_000, 40_000, 15_000
N_BRANDS, N_SHOPS, N_CATES, N_SEGMENTS, K = 30_000, 30_000, 400, 12, 8
HIST_MAX = 20
N_CITIES, N_REGIONS, N_OCCUPATIONS, N_DEVICES, N_PAGE_CATES = 350, 30, 20, 15, 50
N_PIDS, N_CREATIVES, N_FORMATS, N_LANDINGS, N_OS = 8, 4, 5, 3, 3
TARGET_CTR = 0.035

# token vocabularies of the small categoricals (index -> raw token written to the log)
OS_TOKENS = ("android", "ios", "other")
CREATIVE_TOKENS = ("image", "video", "carousel", "text")
FORMAT_TOKENS = ("banner", "feed", "interstitial", "native", "splash")
LANDING_TOKENS = ("store", "web", "deeplink")
NETWORK_TOKENS = ("wifi", "4g", "5g", "3g")
GENDER_TOKENS = ("M", "F")
APP_VERSIONS = tuple(f"{v // 10}.{v % 10}" for v in range(70, 82))


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Normalised power-law weights over n ids in random order (long tail, ids not sorted by popularity)."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(w / w.sum())


def centred_table(rng: np.random.Generator, shape: tuple[int, int], std: float) -> np.ndarray:
    """A random interaction table with zero row and column means: a pure interaction, no main effect."""
    t = rng.normal(0.0, std, shape)
    return t - t.mean(0, keepdims=True) - t.mean(1, keepdims=True) + t.mean()


def sample_within(groups: np.ndarray, pops: np.ndarray, n_groups: int, want: np.ndarray,
                  rng: np.random.Generator, fallback: np.ndarray) -> np.ndarray:
    """Pick, for each group id in `want`, a member of that group, popular members more often.

    Members are sorted per group by popularity; the index floor(size * U**3) favours the head. Empty
    groups fall back to `fallback` (same length as `want`)."""
    order = np.lexsort((-pops, groups))
    starts = np.searchsorted(groups[order], np.arange(n_groups + 1))
    size = starts[want + 1] - starts[want]
    pick = (size * rng.random(want.size) ** 3).astype(np.int64)
    out = order[np.minimum(starts[want] + pick, len(order) - 1)]
    return np.where(size > 0, out, fallback)


@dataclass(frozen=True)
class Users:
    weight: np.ndarray          # sampling probability per impression
    segment: np.ndarray
    gender: np.ndarray          # 0/1
    age: np.ndarray             # years
    age_level: np.ndarray       # 0..6
    city: np.ndarray
    region: np.ndarray
    occupation: np.ndarray
    shopping_level: np.ndarray  # 0..2
    device: np.ndarray
    os: np.ndarray
    app_version: np.ndarray
    member_level: np.ndarray    # 0..4
    activity: np.ndarray        # observed activity count
    power: np.ndarray           # purchase power (standardised scale)
    interest: np.ndarray        # (N_USERS, K)
    favourites: np.ndarray      # (N_USERS, 3) category ids (repeats when fewer)
    hist_cate: np.ndarray       # (N_USERS, HIST_MAX) category ids, -1 = padding
    hist_brand: np.ndarray      # (N_USERS, HIST_MAX) brand ids, -1 = padding/unbranded
    bias: np.ndarray            # hidden per-user logit bias
    missing: dict[str, np.ndarray] = field(default_factory=dict)  # column -> per-user missing mask


@dataclass(frozen=True)
class Ads:
    weight: np.ndarray
    campaign: np.ndarray
    advertiser: np.ndarray
    cate: np.ndarray
    brand: np.ndarray
    shop: np.ndarray
    creative: np.ndarray
    fmt: np.ndarray
    landing: np.ndarray
    price: np.ndarray
    quality: np.ndarray         # true quality (observed with noise)
    quality_obs: np.ndarray
    age_days: np.ndarray
    bid: np.ndarray
    bias: np.ndarray            # hidden per-ad logit bias
    hist_ctr: np.ndarray        # noisy historical CTR (NaN when the ad is too new)
    brand_missing: np.ndarray


@dataclass(frozen=True)
class TruthModel:
    """Parameters of the ground-truth logit (see the module docstring for what each term means)."""

    b0: float
    cate_vec: np.ndarray        # (N_CATES, K)
    cate_bias: np.ndarray
    pid_effect: np.ndarray
    creative_effect: np.ndarray
    gender_effect: np.ndarray
    age_effect: np.ndarray
    network_effect: np.ndarray
    member_effect: np.ndarray
    hour_effect: np.ndarray     # (24,)
    hour_os: np.ndarray         # (24, N_OS)
    age_creative: np.ndarray    # (7, N_CREATIVES)
    pid_format: np.ndarray      # (N_PIDS, N_FORMATS)
    gender_cate: np.ndarray     # (2, N_CATES)
    coef: dict[str, float]

    def describe(self) -> dict:
        """JSON-able summary for simulation.json."""
        return {"b0": round(self.b0, 4), "coefficients": self.coef,
                "table_std": {"hour_os": .35, "age_creative": .3, "pid_format": .3, "gender_cate": .3}}


@dataclass(frozen=True)
class World:
    seed: int
    users: Users
    ads: Ads
    truth: TruthModel
    segment_cate_p: np.ndarray  # (N_SEGMENTS, N_CATES) category taste per segment
    page_of_cate: np.ndarray    # (N_CATES,) the page category an ad of that category usually runs on

    def describe(self) -> dict:
        return {"users": N_USERS, "ads": N_ADS, "campaigns": N_CAMPAIGNS, "advertisers": N_ADVERTISERS,
                "brands": N_BRANDS, "shops": N_SHOPS, "categories": N_CATES, "segments": N_SEGMENTS,
                "interest_dim": K, "hist_max": HIST_MAX, "target_ctr": TARGET_CTR, "truth": self.truth.describe()}


def _build_ads(rng: np.random.Generator, cate_w: np.ndarray) -> Ads:
    brand_cate = rng.choice(N_CATES, N_BRANDS, p=cate_w)
    adv_brand = rng.choice(N_BRANDS, N_ADVERTISERS, p=zipf_weights(N_BRANDS, 1.0, rng))
    adv_shop = rng.choice(N_SHOPS, N_ADVERTISERS, replace=False)
    camp_adv = rng.choice(N_ADVERTISERS, N_CAMPAIGNS, p=zipf_weights(N_ADVERTISERS, 0.9, rng))
    camp_brand = np.where(rng.random(N_CAMPAIGNS) < 0.9, adv_brand[camp_adv], rng.integers(0, N_BRANDS, N_CAMPAIGNS))
    camp_cate = np.where(rng.random(N_CAMPAIGNS) < 0.85, brand_cate[camp_brand], rng.choice(N_CATES, N_CAMPAIGNS, p=cate_w))
    camp_shop = np.where(rng.random(N_CAMPAIGNS) < 0.85, adv_shop[camp_adv], rng.integers(0, N_SHOPS, N_CAMPAIGNS))
    campaign = rng.choice(N_CAMPAIGNS, N_ADS, p=zipf_weights(N_CAMPAIGNS, 0.8, rng))
    cate = camp_cate[campaign]
    price_level = rng.normal(3.4, 0.8, N_CATES)
    quality = rng.normal(0.0, 1.0, N_ADS)
    age_days = np.floor(rng.exponential(60.0, N_ADS)).astype(np.int64)
    bias = rng.normal(0.0, 0.35, N_ADS)
    hist_ctr = TARGET_CTR * np.exp(bias + 0.35 * quality + rng.normal(0.0, 0.3, N_ADS))
    return Ads(weight=zipf_weights(N_ADS, 1.05, rng), campaign=campaign, advertiser=camp_adv[campaign], cate=cate,
               brand=camp_brand[campaign], shop=camp_shop[campaign],
               creative=rng.choice(N_CREATIVES, N_ADS, p=[.55, .2, .15, .1]),
               fmt=rng.choice(N_FORMATS, N_ADS, p=[.3, .3, .1, .2, .1]),
               landing=rng.choice(N_LANDINGS, N_ADS, p=[.5, .35, .15]),
               price=np.round(np.exp(price_level[cate] + rng.normal(0.0, 0.5, N_ADS)), 2),
               quality=quality, quality_obs=np.round(5.0 + quality + rng.normal(0.0, 0.5, N_ADS), 3),
               age_days=age_days, bid=np.round(0.5 * np.exp(rng.normal(0.0, 0.6, N_ADS)), 3), bias=bias,
               hist_ctr=np.where(age_days < 3, np.nan, np.round(np.clip(hist_ctr, 1e-4, 0.5), 5)),
               brand_missing=rng.random(N_ADS) < 0.03)


def _pick_by_row(cdf: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw where each draw uses the CDF row `rows[i]` (looped over the few distinct rows)."""
    out = np.empty(u.shape, dtype=np.int64)
    for r in np.unique(rows):
        sel = rows == r
        out[sel] = np.minimum(np.searchsorted(cdf[r], u[sel], side="right"), cdf.shape[1] - 1)
    return out


def _build_users(rng: np.random.Generator, ads: Ads, cate_vec: np.ndarray, centroid: np.ndarray,
                 seg_cdf: np.ndarray) -> Users:
    n = N_USERS
    raw_activity = np.exp(rng.normal(0.0, 1.0, n))
    segment = rng.choice(N_SEGMENTS, n, p=rng.dirichlet(np.full(N_SEGMENTS, 3.0)))
    age = np.clip(np.round(16 + rng.gamma(3.0, 6.0, n)), 16, 70).astype(np.int64)
    age_level = np.digitize(age, [20, 25, 30, 35, 45, 55])
    power = rng.normal(0.0, 1.0, n) + 0.15 * (age_level - 3)
    city = rng.choice(N_CITIES, n, p=zipf_weights(N_CITIES, 1.0, rng))
    device = rng.choice(N_DEVICES, n, p=zipf_weights(N_DEVICES, 1.2, rng))
    os_ = np.where(device == 0, 1, np.where(rng.random(n) < 0.01, 2, 0))
    n_fav = rng.integers(1, 4, n)
    fav = _pick_by_row(seg_cdf, np.repeat(segment, 3), rng.random(3 * n)).reshape(n, 3)
    fav = np.where(np.arange(3)[None, :] < n_fav[:, None], fav, fav[:, :1])
    fav_mean = cate_vec[fav].mean(1)
    interest = 0.8 * centroid[segment] + 0.7 * fav_mean + rng.normal(0.0, 0.3, (n, K))
    interest -= interest.mean(0)
    # behaviour sequence: past clicked ads, mostly from favourite categories
    length = np.where(rng.random(n) < 0.08, 0, np.minimum(HIST_MAX, 1 + rng.geometric(0.12, n)))
    slot_ok = np.arange(HIST_MAX)[None, :] < length[:, None]
    owner = np.nonzero(slot_ok)[0]  # one entry per real history event, row-major
    from_fav = fav[owner, rng.integers(0, 3, owner.size)]
    from_seg = _pick_by_row(seg_cdf, segment[owner], rng.random(owner.size))
    want = np.where(rng.random(owner.size) < 0.7, from_fav, from_seg)
    global_ads = np.minimum(np.searchsorted(np.cumsum(ads.weight), rng.random(owner.size)), N_ADS - 1)
    hist_ad = sample_within(ads.cate, ads.weight, N_CATES, want, rng, global_ads)
    hist_cate, hist_brand = np.full((n, HIST_MAX), -1), np.full((n, HIST_MAX), -1)
    hist_cate[slot_ok] = ads.cate[hist_ad]
    hist_brand[slot_ok] = np.where(ads.brand_missing[hist_ad], -1, ads.brand[hist_ad])
    missing = {c: rng.random(n) < r for c, r in (("u_gender", .03), ("u_age_level", .02), ("u_city", .04),
                                                  ("u_occupation", .05), ("u_device_brand", .02),
                                                  ("user_purchase_power", .05))}
    return Users(weight=raw_activity / raw_activity.sum(), segment=segment, gender=(rng.random(n) < .48).astype(np.int64),
                 age=age, age_level=age_level, city=city, region=rng.integers(0, N_REGIONS, N_CITIES)[city],
                 occupation=rng.choice(N_OCCUPATIONS, n, p=zipf_weights(N_OCCUPATIONS, 0.8, rng)),
                 shopping_level=np.digitize(power + rng.normal(0.0, 0.5, n), [-0.7, 0.7]), device=device, os=os_,
                 app_version=np.maximum(0, len(APP_VERSIONS) - rng.geometric(0.35, n)),
                 member_level=np.digitize(np.log(raw_activity) + rng.normal(0.0, 0.7, n), [-1.0, 0.0, 0.8, 1.6]),
                 activity=np.round(20 * raw_activity * np.exp(rng.normal(0.0, 0.3, n))).astype(np.int64),
                 power=np.round(power, 3), interest=interest, favourites=fav,
                 hist_cate=hist_cate, hist_brand=hist_brand,
                 bias=rng.normal(0.0, 0.25, n), missing=missing)


def _build_truth(rng: np.random.Generator, cate_vec: np.ndarray) -> TruthModel:
    hours = np.arange(24)
    return TruthModel(
        b0=0.0, cate_vec=cate_vec, cate_bias=rng.normal(0.0, 0.3, N_CATES),
        pid_effect=rng.normal(0.0, 0.25, N_PIDS), creative_effect=np.array([0.0, 0.25, 0.1, -0.2]),
        gender_effect=np.array([-0.05, 0.05]), age_effect=np.linspace(0.15, -0.15, 7),
        network_effect=np.array([0.1, 0.0, 0.05, -0.2]), member_effect=np.linspace(-0.1, 0.2, 5),
        hour_effect=0.2 * np.sin((hours - 14) / 24 * 2 * np.pi), hour_os=centred_table(rng, (24, N_OS), .35),
        age_creative=centred_table(rng, (7, N_CREATIVES), .3), pid_format=centred_table(rng, (N_PIDS, N_FORMATS), .3),
        gender_cate=centred_table(rng, (2, N_CATES), .3),
        coef={"quality": .35, "log_position": -.45, "log_price_std": -.12, "log_activity_std": .10,
              "interest": .5, "hist_cate": .65, "hist_brand": .45, "over_budget": -.9,
              "budget_log_price_at_mean_power": 3.8, "budget_per_power_std": .5})


def build_world(seed: int) -> World:
    """All fixed tables of the simulated world for `seed` (b0 uncalibrated: see pipeline.simulator.rows)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    cate_w = zipf_weights(N_CATES, 1.0, rng)
    cate_vec = rng.normal(0.0, 1.0 / np.sqrt(K), (N_CATES, K))
    centroid = rng.normal(0.0, 1.0, (N_SEGMENTS, K))
    taste = 2.0 * centroid @ cate_vec.T + np.log(cate_w)[None, :]
    seg_p = np.exp(taste - taste.max(1, keepdims=True))
    seg_p /= seg_p.sum(1, keepdims=True)
    ads = _build_ads(rng, cate_w)
    users = _build_users(rng, ads, cate_vec, centroid, np.cumsum(seg_p, 1))
    return World(seed=seed, users=users, ads=ads, truth=_build_truth(rng, cate_vec), segment_cate_p=seg_p,
                 page_of_cate=rng.integers(0, N_PAGE_CATES, N_CATES))
