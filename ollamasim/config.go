package ollamasim

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"
)

// Defaults applied by New to zero fields of Config and ModelSpec.
const (
	DefaultParallel      = 4
	DefaultMaxQueue      = 512 // Ollama's OLLAMA_MAX_QUEUE default
	DefaultMaxLoaded     = 3   // Ollama's OLLAMA_MAX_LOADED_MODELS default without a GPU
	DefaultKeepAlive     = 5 * time.Minute
	DefaultVersion       = "0.25.0"
	DefaultContextLength = 4096 // num_ctx when a request sets none (OLLAMA_CONTEXT_LENGTH)
	DefaultMinTokens     = 20
	DefaultMaxTokens     = 40
	DefaultEmbeddingDims = 64
)

// forever is the keep-alive of a model that never expires, as Ollama stores
// a negative keep_alive.
const forever = time.Duration(math.MaxInt64)

// Config describes one simulated Ollama node. The zero value is usable: every
// zero field takes the default named in its comment.
type Config struct {
	// Models lists the models present on the node, as /api/tags reports them.
	Models []ModelSpec

	// Registry lists the models that /api/pull can fetch, keyed by name. Nil
	// means any name is pullable, with ModelSpec defaults. A non-nil map
	// makes every other name fail with "pull model manifest: file does not
	// exist".
	Registry map[string]ModelSpec

	// Parallel is the number of slots per loaded model, like
	// OLLAMA_NUM_PARALLEL: at most Parallel requests for one model generate at
	// once. Zero means DefaultParallel.
	Parallel int

	// MaxQueue is the number of requests that may wait for a slot or a load,
	// like OLLAMA_MAX_QUEUE. The next one gets 503 "server busy". Zero means
	// DefaultMaxQueue, and a negative value means no request may wait.
	MaxQueue int

	// MaxLoaded is the number of models held in memory at once, like
	// OLLAMA_MAX_LOADED_MODELS. Loading another evicts the least recently
	// used idle model, or waits until one is idle. Zero means DefaultMaxLoaded.
	MaxLoaded int

	// LoadTime is the delay of a cold load, spent before the first byte of
	// the first request that needs the model. Zero loads at once.
	LoadTime time.Duration

	// TokensPerSec paces generation, one token per line. Zero generates as
	// fast as possible.
	TokensPerSec float64

	// PromptTokensPerSec paces prompt evaluation. Tokens found in a slot's
	// prompt cache are not evaluated again. Zero evaluates at once.
	PromptTokensPerSec float64

	// PullTime is the time an /api/pull spends sending progress. Zero sends
	// all progress at once.
	PullTime time.Duration

	// KeepAlive is the default keep_alive of a loaded model. Zero means
	// DefaultKeepAlive (Ollama's five minutes), and a negative value keeps models
	// loaded forever.
	KeepAlive time.Duration

	// ContextLength is the num_ctx of a request that sets none. Zero means
	// DefaultContextLength.
	ContextLength int

	// MinTokens and MaxTokens bound the length of a completion that ends on its
	// own (done_reason "stop"). num_predict or max_tokens can cut it shorter
	// (done_reason "length"). Zero means DefaultMinTokens and DefaultMaxTokens.
	MinTokens int
	MaxTokens int

	// Version is reported by /api/version. Empty means DefaultVersion.
	Version string

	// AllowedOrigins lists Origin header values accepted besides local ones,
	// like OLLAMA_ORIGINS. "*" accepts every origin.
	AllowedOrigins []string

	// Seed seeds the completions of requests that are not deterministic (no
	// options.seed and a temperature other than 0) and the completion IDs, so
	// a run with a fixed request order repeats itself.
	Seed uint64

	// Now returns the time stamped on responses (created_at, expires_at,
	// modified_at). Nil means time.Now. Pacing, loads and expiry always use
	// real timers.
	Now func() time.Time

	// Logger receives load, unload and fault changes at Info and one line per
	// request at Debug. Nil discards logs.
	Logger *slog.Logger

	// Faults are the faults active from the start.
	Faults Faults

	// SkipChecks turns off the checks of request bodies that Ollama makes
	// before it looks a model up: the decode with Ollama's request types,
	// the value checks and the name checks. They cost more than the rest
	// of an unpaced response, so benchmarks whose requests are valid turn
	// them off to keep the nodes cheap.
	SkipChecks bool
}

// ModelSpec describes one model. Zero fields take defaults that depend on
// Embedding: a generative model looks like llama3:8b, an embedding model like
// nomic-embed-text.
type ModelSpec struct {
	// Name is the model name, such as "llama3:8b". A name without a tag means
	// ":latest".
	Name string

	// SizeBytes is the size on disk, reported by /api/tags. /api/ps adds an
	// estimate of the context memory.
	SizeBytes int64

	// Digest is the 64 hex digit manifest digest. Empty means a digest
	// derived from the name, so it is stable across runs.
	Digest string

	// Family is the architecture, such as "llama" or "nomic-bert".
	Family string

	// ParameterSize is the parameter count as Ollama prints it, such as "8.0B".
	ParameterSize string

	// Quantization is the quantization level, such as "Q4_K_M".
	Quantization string

	// Embedding marks an embedding-only model: /api/generate and /api/chat
	// reject it with 400, the embedding routes accept it.
	Embedding bool

	// ContextLength is the longest context the model supports. A larger
	// num_ctx is clamped to it.
	ContextLength int

	// EmbeddingLength is the number of dimensions of the vectors the model
	// returns. Zero means DefaultEmbeddingDims.
	EmbeddingLength int
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Parallel == 0 {
		c.Parallel = DefaultParallel
	}
	switch {
	case c.MaxQueue == 0:
		c.MaxQueue = DefaultMaxQueue
	case c.MaxQueue < 0:
		c.MaxQueue = 0
	}
	if c.MaxLoaded == 0 {
		c.MaxLoaded = DefaultMaxLoaded
	}
	switch {
	case c.KeepAlive == 0:
		c.KeepAlive = DefaultKeepAlive
	case c.KeepAlive < 0:
		c.KeepAlive = forever
	}
	if c.ContextLength == 0 {
		c.ContextLength = DefaultContextLength
	}
	if c.MinTokens == 0 {
		c.MinTokens = DefaultMinTokens
	}
	if c.MaxTokens == 0 {
		c.MaxTokens = max(DefaultMaxTokens, c.MinTokens)
	}
	if c.Version == "" {
		c.Version = DefaultVersion
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every invalid field of c at once. New panics on a Config
// that Validate rejects.
func (c Config) Validate() error {
	var errs []error
	check := func(bad bool, format string, args ...any) {
		if bad {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Parallel < 0, "parallel: %d is negative, want 1 or more", c.Parallel)
	check(c.MaxLoaded < 0, "max loaded: %d is negative, want 1 or more", c.MaxLoaded)
	check(c.LoadTime < 0, "load time: %v is negative", c.LoadTime)
	check(c.PullTime < 0, "pull time: %v is negative", c.PullTime)
	check(c.TokensPerSec < 0, "tokens per second: %v is negative", c.TokensPerSec)
	check(c.PromptTokensPerSec < 0,
		"prompt tokens per second: %v is negative", c.PromptTokensPerSec)
	check(c.ContextLength < 0, "context length: %d is negative", c.ContextLength)
	check(c.MinTokens < 0 || c.MaxTokens < 0,
		"answer tokens: %d..%d has a negative bound", c.MinTokens, c.MaxTokens)
	check(c.MaxTokens > 0 && c.MinTokens > c.MaxTokens,
		"answer tokens: minimum %d exceeds maximum %d", c.MinTokens, c.MaxTokens)

	seen := make(map[string]bool)
	for i, m := range c.Models {
		if err := m.validate(); err != nil {
			errs = append(errs, fmt.Errorf("models[%d]: %w", i, err))
			continue
		}
		key := modelKey(m.Name)
		check(seen[key], "models[%d]: %q is listed twice", i, m.Name)
		seen[key] = true
	}
	for name, m := range c.Registry {
		m.Name = name
		if err := m.validate(); err != nil {
			errs = append(errs, fmt.Errorf("registry[%q]: %w", name, err))
		}
	}
	if err := c.Faults.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("faults: %w", err))
	}
	return errors.Join(errs...)
}

func (m ModelSpec) validate() error {
	var errs []error
	if strings.TrimSpace(m.Name) == "" {
		errs = append(errs, errors.New("name is empty"))
	}
	if m.SizeBytes < 0 {
		errs = append(errs, fmt.Errorf("size: %d bytes is negative", m.SizeBytes))
	}
	if m.Digest != "" && !isHexDigest(m.Digest) {
		errs = append(errs, fmt.Errorf("digest: %q is not 64 hex digits", m.Digest))
	}
	if m.ContextLength < 0 || m.EmbeddingLength < 0 {
		errs = append(errs, errors.New("context and embedding lengths must not be negative"))
	}
	return errors.Join(errs...)
}

// withDefaults returns m with its name normalised and every zero field set
// to the default of its kind.
func (m ModelSpec) withDefaults() ModelSpec {
	m.Name = normalizeName(m.Name)
	if m.Digest == "" {
		sum := sha256.Sum256([]byte("ollamasim/" + modelKey(m.Name)))
		m.Digest = hex.EncodeToString(sum[:])
	}
	m.Digest = strings.ToLower(m.Digest)
	if m.EmbeddingLength == 0 {
		m.EmbeddingLength = DefaultEmbeddingDims
	}
	if m.Embedding {
		return m.withEmbeddingDefaults()
	}
	return m.withGenerativeDefaults()
}

func (m ModelSpec) withGenerativeDefaults() ModelSpec {
	if m.SizeBytes == 0 {
		m.SizeBytes = 4_661_224_676 // llama3:8b in Q4_K_M
	}
	if m.Family == "" {
		m.Family = "llama"
	}
	if m.ParameterSize == "" {
		m.ParameterSize = "8.0B"
	}
	if m.Quantization == "" {
		m.Quantization = "Q4_K_M"
	}
	if m.ContextLength == 0 {
		m.ContextLength = 8192
	}
	return m
}

func (m ModelSpec) withEmbeddingDefaults() ModelSpec {
	if m.SizeBytes == 0 {
		m.SizeBytes = 274_302_450 // nomic-embed-text in F16
	}
	if m.Family == "" {
		m.Family = "nomic-bert"
	}
	if m.ParameterSize == "" {
		m.ParameterSize = "137M"
	}
	if m.Quantization == "" {
		m.Quantization = "F16"
	}
	if m.ContextLength == 0 {
		m.ContextLength = 2048
	}
	return m
}

// capabilities returns the capability list Ollama reports for the model.
// Generative models claim tools so that requests with tools are accepted.
func (m ModelSpec) capabilities() []string {
	if m.Embedding {
		return []string{"embedding"}
	}
	return []string{"completion", "tools"}
}

// ParseModels parses a comma-separated model list such as
// "llama3:8b=4.7,nomic-embed-text". Each item is a name, optionally followed
// by "=" and the size in gigabytes (10^9 bytes). A name containing "embed"
// makes an embedding-only model.
func ParseModels(list string) ([]ModelSpec, error) {
	var specs []ModelSpec
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, size, hasSize := strings.Cut(item, "=")
		spec := ModelSpec{
			Name:      strings.TrimSpace(name),
			Embedding: strings.Contains(strings.ToLower(name), "embed"),
		}
		if hasSize {
			gb, err := strconv.ParseFloat(strings.TrimSpace(size), 64)
			if err != nil || gb <= 0 {
				return nil, fmt.Errorf("model %q: size %q is not a positive number of GB", name, size)
			}
			spec.SizeBytes = int64(gb * 1e9)
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

// normalizeName returns name as Ollama displays it: without the default
// registry and namespace, and with ":latest" when it has no tag.
func normalizeName(name string) string {
	name = strings.TrimSpace(name)
	name = strings.TrimPrefix(name, "registry.ollama.ai/")
	name = strings.TrimPrefix(name, "library/")
	if colon := strings.LastIndex(name, ":"); colon < 0 || colon < strings.LastIndex(name, "/") {
		name += ":latest"
	}
	return name
}

// modelKey returns the key that identifies a model: Ollama matches names
// without regard to case.
func modelKey(name string) string {
	return strings.ToLower(normalizeName(name))
}

// ModelKey returns the key under which the node matches and counts the
// model name, as in Stats.ModelRequests: lower case, without the default
// registry and namespace, and with ":latest" when the name has no tag.
func ModelKey(name string) string {
	return modelKey(name)
}

func isHexDigest(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
