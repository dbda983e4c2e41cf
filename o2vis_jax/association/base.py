"""The association-method interface and the registry.

An association method carries its own state from frame to frame (the `lax.scan` carry) and aligns each
frame's segmenter queries to S identity slots. Everything a method is lives in its own package under
`o2vis_jax/association/` (state + step, loss, default config, weight conversion) behind `Method`; the
segmenter, the data pipeline, the trainer, video inference and evaluation only talk to this interface.

Frames (`step`'s `frame`, one frame, no time axis) hold the segmenter's outputs under standard names:
  embeds [N, C]               normed queries e_t (`pred_embds`)
  embeds_without_norm [N, C]  un-normed queries u_t (`pred_embds_without_norm`)
  logits [N, K+1]             class logits z_t
  masks [N, h, w]             mask logits
  mask_features [h, w, C]     the pixel decoder's mask features
plus any method-specific extras. A method lists what it reads in `required_inputs` (the driver checks
them and names a missing one); video inference passes exactly those, training passes every standard key.

Only `name`, `default_config`, `init_state` and `step` must be written; the rest has defaults here.
"""

import abc
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

STANDARD_INPUTS = ("embeds", "embeds_without_norm", "logits", "masks", "mask_features")


class Method(abc.ABC):
  """One association method. Instances are stateless: all state is the pytree `init_state` returns.

  Class attributes:
    name: the registry name (`config.association.method`).
    description: one line for `--help` listings (scripts/infer.py, scripts/demo.py).
    config_key: the section of the experiment config the method reads (default: `name`); a dotted path
      such as 'association.cavis' puts it inside another section (`section_of` / `set_section`).
    required_inputs: the frame keys `step` reads (besides `valid`, which only the driver reads).
    phases: the training phases, static strings; `step` receives `phase=` only when there are several.
    score_inputs: the per-frame outputs that video-level scoring reads (they leave the device per chunk).
  """
  name: str = ""
  description: str = ""
  config_key: Optional[str] = None
  required_inputs: Tuple[str, ...] = ("embeds",)
  phases: Tuple[str, ...] = ("main",)
  score_inputs: Tuple[str, ...] = ("pred_logits",)
  # Top-level parameter subtrees the method's own training keeps fixed (the optimiser's frozen mask),
  # e.g. CAVIS's ReID head, which the segmenter stage trains and the tracker stage only runs.
  frozen_in_training: Tuple[str, ...] = ()
  # Top-level parameter subtrees that the SEGMENTER stage trains together with the segmenter, through
  # `segmenter_loss` (CAVIS's ReID head); the tracker stage starts them from its init checkpoint.
  segmenter_stage_params: Tuple[str, ...] = ()

  # --- configuration -----------------------------------------------------------------------------

  @property
  def section_name(self) -> str:
    return self.config_key or self.name

  @abc.abstractmethod
  def default_config(self) -> ml_collections.ConfigDict:
    """The method's own config section with its defaults."""

  def tiny(self, section: ml_collections.ConfigDict) -> None:
    """Shrinks `section` in place for unit tests (2-core CPU). Default: nothing to shrink."""
    del section

  def section(self, config) -> ml_collections.ConfigDict:
    """`config[config_key]`, or the defaults when the config has no such section."""
    section = section_of(config, self.section_name)
    return section if section is not None else self.default_config()

  def validate_section(self, section, config) -> None:
    """Checks the method's section of `config` (`config_validation.validate` calls it right after the
    config is parsed); raises `config_validation.ConfigError` naming the field. Default: every field is
    one of `default_config()`'s, of its type. A method with allowed values or ranges overrides it, calls
    this first, then the checks its `step` would otherwise make mid-run."""
    del config
    from o2vis_jax import config_validation
    config_validation.check_fields(f"config.{self.section_name}", section, self.default_config())

  # --- parameters and state ----------------------------------------------------------------------

  @property
  def trainable(self) -> bool:
    """Whether the method has a loss (it overrides `loss`)."""
    return type(self).loss is not Method.loss

  def init_params(self, config, rng: jax.Array, *, num_classes: int, hidden_dim: int) -> Any:
    """Fresh parameters of the method (`{}` for a method without any)."""
    del config, rng, num_classes, hidden_dim
    return {}

  def param_shapes(self, config, *, num_classes: int, hidden_dim: int) -> Any:
    """The shapes of `init_params` (a pytree of `jax.ShapeDtypeStruct`), for checking a checkpoint
    against the config. Traced by `jax.eval_shape` when `init_params` is traceable; otherwise (values
    drawn on the host, like the referring trackers' Xavier init) computed once."""
    init = lambda rng: self.init_params(config, rng, num_classes=num_classes, hidden_dim=hidden_dim)
    try:
      return jax.eval_shape(init, jax.random.PRNGKey(0))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          init(jax.random.PRNGKey(0)))

  @abc.abstractmethod
  def init_state(self, config, *, num_queries: int, hidden_dim: int, dtype) -> Any:
    """The state before a video's first frame: a pytree of arrays without a batch axis."""

  def state_dtype(self, config, params, inputs_dtype) -> jnp.dtype:
    """The dtype of the state (and of the float inputs the driver casts): the section's `dtype` when
    set, else the promotion of the inputs' and the parameters' dtypes."""
    dtype = self.section(config).get("dtype", None)
    if dtype is not None:
      return jnp.dtype(dtype)
    leaves = [] if params is None else jax.tree.leaves(params)
    return jnp.result_type(inputs_dtype, *[leaf.dtype for leaf in leaves])

  @abc.abstractmethod
  def step(self, config, params, state, frame: Dict[str, jax.Array], *, train: bool):
    """One frame -> (new state, outputs). `outputs` has at least pred_logits [S, K+1] and pred_masks
    [S, h, w] for S identity slots (static), and may add slot_valid [S] and method-specific arrays.
    A method with several `phases` also takes `phase=` (static; None when the caller gave none, e.g. a
    plain `track(..., train=True)`: the method picks its default). The driver keeps the old state on a
    padded frame: a step never looks at `frame['valid']`."""

  def state_outputs(self, state) -> Dict[str, jax.Array]:
    """Per-frame outputs that report the state after the frame (e.g. the memory). The driver adds them
    after its padded-frame guard, so on a padded frame they repeat the previous frame's."""
    del state
    return {}

  # --- training ----------------------------------------------------------------------------------

  def phase(self, config, step: int) -> str:
    """The training phase at optimiser step `step` (one of `phases`). Default: the only one."""
    del config, step
    return self.phases[-1]

  def params_from_segmenter(self, config, params, segmenter_params):
    """Fresh parameters of the method completed from the (frozen) segmenter's, before tracker training
    (DVIS-DAQ: the segmenter's learned queries, which its slot branch reads). Default: unchanged."""
    del config, segmenter_params
    return params

  def training_inputs(self, config, targets, keys: jax.Array) -> Dict[str, jax.Array]:
    """Extra per-frame inputs [B, T, ...] of a training step that reads the ground truth inside the
    recurrence (DVIS-DAQ: which queries become tracks depends on the matching), from the batched
    `losses.VideoTargets` and the videos' keys [B]. Default: none (the loss alone sees the targets)."""
    del config, targets, keys
    return {}

  def loss(self, config, key: jax.Array, outputs: Dict[str, jax.Array], targets, num_masks: jax.Array,
           *, phase: str) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """The loss of one video: `outputs` are the driver's per-frame outputs with `train=True` [T, ...],
    `targets` a `losses.VideoTargets`, `num_masks` the global normaliser -> (total, {term: value})."""
    raise NotImplementedError(f"association method {self.name!r} has no loss: it is training-free")

  # --- the segmenter stage (config.train.task='segmenter') ------------------------------------------

  def segmenter_targets(self, config, targets):
    """The targets of the segmenter's per-frame set loss, from one video's `losses.VideoTargets`.
    Default: the GTs present at each frame (SPEC 6)."""
    del config
    return targets

  def segmenter_loss(self, config, key: jax.Array, params, frames: Dict[str, jax.Array], targets,
                     query_of_gt: jax.Array) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Terms the method adds to the segmenter stage's loss of one video -> (weighted total, {term:
    value}). `params`: the method's parameters (gradients reach `segmenter_stage_params`); `frames`: the
    segmenter's outputs [T, ...] under the standard input names (with gradient); `targets`: the video's
    `losses.VideoTargets`; `query_of_gt` [T, G]: the last layer's per-frame assignment (on
    `segmenter_targets`). Default: nothing."""
    del config, key, params, frames, targets, query_of_gt
    return jnp.zeros((), jnp.float32), {}

  # --- video-level scoring (streaming: per-chunk accumulation, constant memory) --------------------

  def max_num(self, config, default: int) -> int:
    """How many instances a video keeps (default: `config.inference.max_num`)."""
    del config
    return default

  def score_init(self, config, num_slots: int, num_classes: int) -> Dict[str, Any]:
    """The empty accumulator of video-level scoring (host NumPy). Default: O2VIS's running logit sum."""
    del config
    return {"logit_sum": np.zeros((num_slots, num_classes + 1), np.float64), "count": 0}

  def score_update(self, config, accumulator: Dict[str, Any], outputs: Dict[str, np.ndarray]
                   ) -> Dict[str, Any]:
    """Adds a chunk of valid frames (`outputs[k]` [T_valid, S, ...] for k in `score_inputs`)."""
    del config
    logits = np.asarray(outputs["pred_logits"], np.float64)
    return {"logit_sum": accumulator["logit_sum"] + logits.sum(0),
            "count": accumulator["count"] + logits.shape[0]}

  def score_instances(self, config, accumulator: Dict[str, Any], max_num: int) -> List[Dict[str, Any]]:
    """The video's instances [{'score', 'label', 'slot'}], best first. Default: REFERENCE.md 8.3, the
    top-k over (slot x class) of softmax(mean logits) without the no-object column."""
    del config
    if accumulator["count"] == 0:
      return []
    scores, labels, slots = video_topk(accumulator["logit_sum"] / accumulator["count"], max_num)
    return [dict(score=float(s), label=int(l), slot=int(n)) for s, l, n in zip(scores, labels, slots)]

  def mean_logits(self, accumulator: Dict[str, Any]) -> Optional[np.ndarray]:
    """The mean class logits of each slot [S, K+1] (for showing every track), if the method keeps them."""
    if "logit_sum" not in accumulator or not accumulator.get("count"):
      return None
    return accumulator["logit_sum"] / accumulator["count"]

  def release(self, config, state, accumulator: Dict[str, Any]) -> Tuple[Any, Dict[str, Any], List[int]]:
    """Streaming inference calls this between chunks: a method whose slots can finish (a sequence that
    died) moves their scores out of the slots and frees them -> (state, accumulator, freed slots); the
    caller moves those slots' masks likewise (released entries come first, in the order returned, then
    the slots). Default: nothing is ever released."""
    del config
    return state, accumulator, []

  # --- weight conversion -------------------------------------------------------------------------

  checkpoint_prefixes: Tuple[str, ...] = ()
  # Keys of another part (the segmenter) that the converter also reads; they stay with their owner too.
  shared_checkpoint_keys: Tuple[str, ...] = ()

  def claims(self, state_dict: Dict[str, Any]) -> bool:
    """Whether a checkpoint's keys are this method's (when several methods share a prefix, e.g.
    'tracker.', each tells its own by a key only it has). Default: a key under `checkpoint_prefixes`."""
    return any(k.startswith(p) for k in state_dict for p in self.checkpoint_prefixes)

  def from_reference(self, state_dict: Dict[str, Any], num_heads: int) -> Tuple[ml_collections.ConfigDict,
                                                                                Any]:
    """(config, params) from the authors' checkpoint entries of this method (keys under
    `checkpoint_prefixes`). The config holds `association.method`, the method's section and the
    `model` sizes read from the shapes."""
    raise NotImplementedError(f"association method {self.name!r} has no reference checkpoint converter")

  def __repr__(self):
    return f"<association method {self.name!r}>"


def class_probabilities(mean_logits: np.ndarray) -> np.ndarray:
  """softmax over K+1 of the mean logits, the no-object column dropped: [S, K] (float64)."""
  logits = np.asarray(mean_logits, np.float64)
  probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probs /= probs.sum(axis=-1, keepdims=True)
  return probs[:, :-1]


def video_topk(mean_logits: np.ndarray, max_num: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Top-k (slot, class) pairs from each slot's mean logits [S, K+1] (REFERENCE.md 8.3).

  P = softmax(mean_logits)[:, :K] (no-object dropped); flat index = slot * K + class; the k largest,
  sorted by decreasing score (ties: lower flat index first). One slot may appear with several classes.
  Returns (scores [k], labels [k] in 0..K-1, slots [k]).
  """
  return score_topk(class_probabilities(mean_logits), max_num)


def score_topk(scores: np.ndarray, max_num: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The `max_num` best (slot, class) of per-class scores [S, K]: flat index = slot * K + class, sorted
  by decreasing score, ties by lower flat index. Returns (scores [k], labels [k], slots [k])."""
  num_classes = scores.shape[-1]
  flat = np.asarray(scores, np.float64).reshape(-1)
  order = np.argsort(-flat, kind="stable")[:min(max_num, flat.size)]
  return flat[order], order % num_classes, order // num_classes


# --------------------------------------------------------------------------------------------------
# The registry.

_REGISTRY: Dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds `method` (an instance) under `method.name`; returns it. Registering a name twice is an error
  unless it is the same object."""
  if not isinstance(method, Method):
    raise TypeError(f"association.register: expected an association.Method instance, got {method!r}")
  if not method.name:
    raise ValueError(f"association.register: {type(method).__name__} has no name")
  existing = _REGISTRY.get(method.name)
  if existing is not None and existing is not method:
    raise ValueError(f"association.register: a method named {method.name!r} is already registered "
                     f"({type(existing).__name__})")
  _REGISTRY[method.name] = method
  return method


def unregister(name: str) -> None:
  """Removes a method (tests register temporary ones)."""
  _REGISTRY.pop(name, None)


def get(name: str) -> Method:
  """The registered method `name`; an unknown name is an error that lists the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"config.association.method={name!r} is not a registered association method; "
                     f"known: {names()}")
  return _REGISTRY[name]


def names() -> List[str]:
  return sorted(_REGISTRY)


def method_name(config) -> str:
  """`config.association.method` (default 'o2vis' when the config has no association section)."""
  section = config.get("association") if hasattr(config, "get") else None
  if section is None or section.get("method") is None:
    return "o2vis"
  return section.method


def method_of(config) -> Method:
  return get(method_name(config))


def association_config(method: str = "o2vis") -> ml_collections.ConfigDict:
  """The `config.association` section: which method runs."""
  return ml_collections.ConfigDict(dict(method=method))


def with_method(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` running method `name`, its section filled from the defaults if absent."""
  method = get(name)
  config = copy.deepcopy(config)   # keeps the types of fields left at None (FieldReference), unlike
  with config.unlocked():          # copy_and_resolve_references, so --config overrides still apply.
    if "association" not in config:
      config.association = association_config(name)
    config.association.method = name
    if section_of(config, method.section_name) is None:
      set_section(config, method.section_name, method.default_config())
  return config


def section_of(config, path: str):
  """The section at `path` ('tracker', or dotted: 'association.cavis'), None when absent."""
  for name in path.split("."):
    if not hasattr(config, "get"):
      return None
    config = config.get(name)
    if config is None:
      return None
  return config


def set_section(config, path: str, value) -> None:
  """Sets the section at `path` (dotted paths create missing parent sections)."""
  *parents, last = path.split(".")
  for name in parents:
    if config.get(name) is None:
      config[name] = ml_collections.ConfigDict()
    config = config[name]
  config[last] = value


def required(method: Method, frame_keys: Sequence[str]) -> None:
  missing = [k for k in method.required_inputs if k not in frame_keys]
  if missing:
    raise KeyError(f"association method {method.name!r} needs frame input(s) {missing}; got "
                   f"{sorted(frame_keys)}")
