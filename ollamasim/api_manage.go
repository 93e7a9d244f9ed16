package ollamasim

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"
)

// progress is one line of /api/pull, /api/push and /api/create.
type progress struct {
	Status    string `json:"status"`
	Digest    string `json:"digest,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
}

// progressPlan is the output of a progress route: steps spread over
// duration, then either failure as an error or, after commit, "success".
type progressPlan struct {
	steps    []progress
	duration time.Duration
	failure  string
	commit   func()
}

// errPullManifest is Ollama's error for a name the registry does not have.
const errPullManifest = "pull model manifest: file does not exist"

type pullRequest struct {
	Model  string `json:"model"`
	Name   string `json:"name"`
	Stream *bool  `json:"stream"`
}

type createRequest struct {
	Model      string            `json:"model"`
	Name       string            `json:"name"`
	From       string            `json:"from"`
	Files      map[string]string `json:"files"`
	Adapters   map[string]string `json:"adapters"`
	Template   string            `json:"template"`
	System     string            `json:"system"`
	Parameters map[string]any    `json:"parameters"`
	Quantize   string            `json:"quantize"`
	Stream     *bool             `json:"stream"`
}

type copyRequest struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
}

// blobDigestPattern is the digest format Ollama accepts in /api/blobs.
var blobDigestPattern = regexp.MustCompile(`^sha256[:-]([0-9a-fA-F]{64})$`)

func (s *Server) handlePull(w http.ResponseWriter, r *http.Request) {
	var req pullRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := cmp.Or(req.Model, req.Name)
	if strings.TrimSpace(name) == "" {
		writeAPIError(w, http.StatusBadRequest, "invalid model name")
		return
	}
	plan := s.pullPlan(name)
	s.sendProgress(w, r, req.Stream == nil || *req.Stream, plan)
}

// pullPlan lists the progress of pulling name: the manifest, the model layer
// in several steps, the small layers, verification and the manifest write.
func (s *Server) pullPlan(name string) progressPlan {
	steps := []progress{{Status: "pulling manifest"}}
	spec, ok := s.models.pullable(name)
	if !ok {
		return progressPlan{steps: steps, failure: errPullManifest}
	}
	spec = spec.withDefaults()

	model := layerDigest(spec.Digest, "model")
	for quarter := range int64(5) {
		steps = append(steps, progress{
			Status:    "pulling " + model[len("sha256:"):][:12],
			Digest:    model,
			Total:     spec.SizeBytes,
			Completed: spec.SizeBytes * quarter / 4,
		})
	}
	for _, layer := range []struct {
		name string
		size int64
	}{{"template", 1429}, {"params", 110}} {
		digest := layerDigest(spec.Digest, layer.name)
		steps = append(steps, progress{
			Status:    "pulling " + digest[len("sha256:"):][:12],
			Digest:    digest,
			Total:     layer.size,
			Completed: layer.size,
		})
	}
	steps = append(steps,
		progress{Status: "verifying sha256 digest"},
		progress{Status: "writing manifest"})
	return progressPlan{
		steps:    steps,
		duration: s.cfg.PullTime,
		commit:   func() { s.models.put(spec, s.cfg.Now()) },
	}
}

func (s *Server) handlePush(w http.ResponseWriter, r *http.Request) {
	var req pullRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := cmp.Or(req.Model, req.Name)
	e := s.models.get(name)
	if e == nil {
		writeAPIError(w, http.StatusNotFound, notFoundMessage(name))
		return
	}
	model := layerDigest(e.spec.Digest, "model")
	steps := []progress{{Status: "retrieving manifest"}}
	for half := range int64(3) {
		steps = append(steps, progress{
			Status:    "pushing " + model[len("sha256:"):][:12],
			Digest:    model,
			Total:     e.spec.SizeBytes,
			Completed: e.spec.SizeBytes * half / 2,
		})
	}
	steps = append(steps, progress{Status: "pushing manifest"})
	s.sendProgress(w, r, req.Stream == nil || *req.Stream, progressPlan{steps: steps})
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := cmp.Or(req.Model, req.Name)
	if strings.TrimSpace(name) == "" {
		writeAPIError(w, http.StatusBadRequest, "invalid model name")
		return
	}

	var plan progressPlan
	var status int
	var message string
	switch {
	case req.From != "":
		plan = s.createFromPlan(name, req)
	case len(req.Files) > 0:
		plan, status, message = s.createFromFilesPlan(name, req)
	default:
		status, message = http.StatusBadRequest, "neither 'from' or 'files' was specified"
	}
	if status != 0 {
		writeAPIError(w, status, message)
		return
	}
	s.sendProgress(w, r, req.Stream == nil || *req.Stream, plan)
}

// createFromPlan derives a model from an existing one, pulling the base
// first when the node does not have it, as Ollama does.
func (s *Server) createFromPlan(name string, req createRequest) progressPlan {
	base := s.models.get(req.From)
	var plan progressPlan
	var baseSpec ModelSpec
	if base == nil {
		plan = s.pullPlan(req.From)
		if plan.failure != "" {
			return plan
		}
		spec, _ := s.models.pullable(req.From)
		baseSpec = spec.withDefaults()
	} else {
		baseSpec = base.spec
	}

	spec := baseSpec
	spec.Name = name
	spec.Digest = derivedDigest(
		baseSpec.Digest, name, req.Template, req.System, fmt.Sprint(req.Parameters))
	if req.Quantize != "" {
		spec.Quantization = strings.ToUpper(req.Quantize)
	}
	baseLayer := layerDigest(baseSpec.Digest, "model")
	plan.steps = append(plan.steps, progress{Status: "using existing layer " + baseLayer})
	if req.Template != "" || req.System != "" || len(req.Parameters) > 0 {
		configLayer := layerDigest(spec.Digest, "config")
		plan.steps = append(plan.steps, progress{Status: "creating new layer " + configLayer})
	}
	plan.steps = append(plan.steps, progress{Status: "writing manifest"})

	pullBase := plan.commit
	plan.commit = func() {
		if pullBase != nil {
			pullBase()
		}
		s.models.put(spec, s.cfg.Now())
	}
	return plan
}

// createFromFilesPlan creates a model from uploaded blobs. It returns a
// status and message instead when a blob is missing.
func (s *Server) createFromFilesPlan(name string, req createRequest) (progressPlan, int, string) {
	files := slices.Sorted(maps.Keys(req.Files))
	steps := []progress{{Status: "parsing GGUF"}}
	var size int64
	var digests []string
	for _, file := range files {
		digest := normalizeBlobDigest(req.Files[file])
		n, ok := s.models.blobSize(digest)
		if !ok {
			return progressPlan{}, http.StatusBadRequest,
				fmt.Sprintf("file %q: blob %s not found, upload it to /api/blobs first", file, req.Files[file])
		}
		size += n
		digests = append(digests, digest)
		steps = append(steps, progress{Status: "using existing layer " + digest})
	}
	steps = append(steps, progress{Status: "writing manifest"})

	spec := ModelSpec{
		Name:         name,
		SizeBytes:    max(size, 1),
		Digest:       derivedDigest(append(digests, name)...),
		Quantization: strings.ToUpper(req.Quantize),
	}
	return progressPlan{steps: steps, commit: func() { s.models.put(spec, s.cfg.Now()) }}, 0, ""
}

// sendProgress sends a plan as NDJSON lines or, when not streaming, as one
// object with the last status. A failure before any line is sent gets 500.
func (s *Server) sendProgress(
	w http.ResponseWriter,
	r *http.Request,
	stream bool,
	plan progressPlan,
) {
	var frames *frameWriter
	if stream {
		frames = newFrameWriter(w, false, s.cutStream)
	}
	pace := plan.duration / time.Duration(len(plan.steps)+1)
	for _, step := range plan.steps {
		if err := s.pause(r.Context(), pace); err != nil {
			s.rec.noteCancelled()
			return
		}
		if frames != nil {
			if err := frames.write(step); err != nil {
				s.rec.noteCancelled()
				return
			}
		}
	}

	last := any(progress{Status: "success"})
	status := http.StatusOK
	if plan.failure != "" {
		last, status = apiError{Error: plan.failure}, http.StatusInternalServerError
	} else if plan.commit != nil {
		plan.commit()
	}
	if frames == nil {
		// Ollama sends a non-streamed progress response without a charset.
		writeJSON(w, status, contentOpenAIJSON, last)
		return
	}
	if err := frames.write(last); err != nil {
		s.rec.noteCancelled()
	}
}

func (s *Server) handleCopy(w http.ResponseWriter, r *http.Request) {
	var req copyRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	if strings.TrimSpace(req.Source) == "" {
		writeAPIError(w, http.StatusBadRequest, fmt.Sprintf("source %q is invalid", req.Source))
		return
	}
	if strings.TrimSpace(req.Destination) == "" {
		message := fmt.Sprintf("destination %q is invalid", req.Destination)
		writeAPIError(w, http.StatusBadRequest, message)
		return
	}
	src := s.models.get(req.Source)
	if src == nil {
		writeAPIError(w, http.StatusNotFound, fmt.Sprintf("model %q not found", req.Source))
		return
	}
	spec := src.spec
	spec.Name = req.Destination
	s.models.put(spec, s.cfg.Now())
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := req.model()
	if strings.TrimSpace(name) == "" {
		writeAPIError(w, http.StatusBadRequest, fmt.Sprintf("name %q is invalid", name))
		return
	}
	if !s.models.remove(name) {
		writeAPIError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", name))
		return
	}
	s.sched.expireNow(modelKey(name))
}

func (s *Server) handleHeadBlob(w http.ResponseWriter, r *http.Request) {
	digest, ok := parseBlobDigest(r.PathValue("digest"))
	if !ok {
		writeAPIError(w, http.StatusBadRequest, "invalid digest format")
		return
	}
	if !s.models.hasBlob(digest) {
		writeAPIError(w, http.StatusNotFound, fmt.Sprintf("blob %q not found", r.PathValue("digest")))
		return
	}
	w.WriteHeader(http.StatusOK)
}

// handlePostBlob stores a blob after checking its SHA-256 against the
// digest in the path. Only the size is kept.
func (s *Server) handlePostBlob(w http.ResponseWriter, r *http.Request) {
	digest, ok := parseBlobDigest(r.PathValue("digest"))
	if !ok {
		writeAPIError(w, http.StatusBadRequest, "invalid digest format")
		return
	}
	if s.models.hasBlob(digest) {
		w.WriteHeader(http.StatusOK)
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		writeAPIError(w, http.StatusInternalServerError, err.Error())
		return
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got != digest {
		message := fmt.Sprintf("digest mismatch, expected %q, got %q", r.PathValue("digest"), got)
		writeAPIError(w, http.StatusBadRequest, message)
		return
	}
	s.models.putBlob(digest, n)
	w.WriteHeader(http.StatusCreated)
}

// parseBlobDigest returns the digest as "sha256:<lower-case hex>".
func parseBlobDigest(raw string) (string, bool) {
	m := blobDigestPattern.FindStringSubmatch(raw)
	if m == nil {
		return "", false
	}
	return "sha256:" + strings.ToLower(m[1]), true
}

// normalizeBlobDigest returns raw in the form parseBlobDigest returns, or
// raw itself when it is not a valid digest.
func normalizeBlobDigest(raw string) string {
	if digest, ok := parseBlobDigest(raw); ok {
		return digest
	}
	return raw
}

// derivedDigest hashes parts into a 64 hex digit manifest digest.
func derivedDigest(parts ...string) string {
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(sum[:])
}
