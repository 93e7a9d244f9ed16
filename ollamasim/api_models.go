package ollamasim

import (
	"cmp"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// modelDetails is the "details" object of /api/tags, /api/ps and /api/show.
// Only /api/tags carries the two lengths.
type modelDetails struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
	ContextLength     int      `json:"context_length,omitempty"`
	EmbeddingLength   int      `json:"embedding_length,omitempty"`
}

func detailsOf(spec ModelSpec) modelDetails {
	return modelDetails{
		Format:            "gguf",
		Family:            spec.Family,
		Families:          []string{spec.Family},
		ParameterSize:     spec.ParameterSize,
		QuantizationLevel: spec.Quantization,
	}
}

type tagsModel struct {
	Name         string       `json:"name"`
	Model        string       `json:"model"`
	ModifiedAt   string       `json:"modified_at"`
	Size         int64        `json:"size"`
	Digest       string       `json:"digest"`
	Details      modelDetails `json:"details"`
	Capabilities []string     `json:"capabilities"`
}

type psModel struct {
	Name          string       `json:"name"`
	Model         string       `json:"model"`
	Size          int64        `json:"size"`
	Digest        string       `json:"digest"`
	Details       modelDetails `json:"details"`
	ExpiresAt     string       `json:"expires_at"`
	SizeVRAM      int64        `json:"size_vram"`
	ContextLength int          `json:"context_length"`
}

type showResponse struct {
	Modelfile    string         `json:"modelfile,omitempty"`
	Parameters   string         `json:"parameters,omitempty"`
	Template     string         `json:"template,omitempty"`
	Details      modelDetails   `json:"details"`
	ModelInfo    map[string]any `json:"model_info"`
	Tensors      []tensorInfo   `json:"tensors,omitempty"`
	Capabilities []string       `json:"capabilities"`
	ModifiedAt   string         `json:"modified_at"`
}

type tensorInfo struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Shape []int  `json:"shape"`
}

// chatTemplate is the prompt template the simulated models report and use
// to turn chat messages into prompt tokens.
const chatTemplate = "{{- range .Messages }}<|im_start|>{{ .Role }}\n" +
	"{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"

func (s *Server) handleRoot(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", contentText)
	io.WriteString(w, "Ollama is running")
}

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, contentJSON, map[string]string{"version": s.cfg.Version})
}

func (s *Server) handleTags(w http.ResponseWriter, r *http.Request) {
	models := []tagsModel{}
	for _, e := range s.models.list() {
		details := detailsOf(e.spec)
		details.ContextLength = e.spec.ContextLength
		details.EmbeddingLength = e.spec.EmbeddingLength
		models = append(models, tagsModel{
			Name:         e.spec.Name,
			Model:        e.spec.Name,
			ModifiedAt:   timestamp(e.modifiedAt),
			Size:         e.spec.SizeBytes,
			Digest:       e.spec.Digest,
			Details:      details,
			Capabilities: e.spec.capabilities(),
		})
	}
	writeJSON(w, http.StatusOK, contentJSON, map[string]any{"models": models})
}

// handlePS lists loaded models. size adds a rough estimate of the context
// memory to the file size, and size_vram equals size, as on a node whose
// GPU holds the whole model.
func (s *Server) handlePS(w http.ResponseWriter, r *http.Request) {
	models := []psModel{}
	for _, m := range s.sched.snapshot().loaded {
		spec := ModelSpec{Name: m.name}.withDefaults()
		if e := s.models.get(m.key); e != nil {
			spec = e.spec
		}
		size := m.sizeBytes + int64(m.numCtx)*int64(s.cfg.Parallel)*kvBytesPerToken
		models = append(models, psModel{
			Name:          m.name,
			Model:         m.name,
			Size:          size,
			Digest:        spec.Digest,
			Details:       detailsOf(spec),
			ExpiresAt:     timestamp(m.expiresAt),
			SizeVRAM:      size,
			ContextLength: m.numCtx,
		})
	}
	writeJSON(w, http.StatusOK, contentJSON, map[string]any{"models": models})
}

// kvBytesPerToken estimates the KV cache of one context token for an 8B
// llama model with an F16 cache: 32 layers, 8 KV heads of 128 dimensions,
// keys and values, 2 bytes each, which is 128 KiB.
const kvBytesPerToken = 128 << 10

// nameRequest is the body of /api/show, /api/delete and similar routes, which
// accept the model in "model" or, as older clients send it, in "name".
type nameRequest struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}

func (n nameRequest) model() string {
	return cmp.Or(n.Model, n.Name)
}

func (s *Server) handleShow(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if err := decodeBody(r, &req); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.model() == "" {
		writeAPIError(w, http.StatusBadRequest, "model is required")
		return
	}
	e := s.models.get(req.model())
	if e == nil {
		writeAPIError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.model()))
		return
	}
	writeJSONChunked(w, http.StatusOK, contentJSON, showOf(e))
}

func showOf(e *modelEntry) showResponse {
	spec := e.spec
	arch := spec.Family
	resp := showResponse{
		Modelfile: fmt.Sprintf("# Modelfile generated by \"ollama show\"\n"+
			"# To build a new Modelfile based on this, replace FROM with:\n"+
			"# FROM %s\n\nFROM %s\n", spec.Name, spec.Name),
		Details: detailsOf(spec),
		ModelInfo: map[string]any{
			"general.architecture":         arch,
			"general.file_type":            15,
			"general.parameter_count":      parameterCount(spec.ParameterSize),
			arch + ".context_length":       spec.ContextLength,
			arch + ".embedding_length":     spec.EmbeddingLength,
			arch + ".block_count":          32,
			arch + ".attention.head_count": 32,
		},
		Tensors: []tensorInfo{
			{Name: "token_embd.weight", Type: spec.Quantization, Shape: []int{spec.EmbeddingLength, 32000}},
			{Name: "output_norm.weight", Type: "F32", Shape: []int{spec.EmbeddingLength}},
		},
		Capabilities: spec.capabilities(),
		ModifiedAt:   timestamp(e.modifiedAt),
	}
	if !spec.Embedding {
		resp.Template = chatTemplate
		resp.Parameters = "stop                           \"<|im_end|>\""
		resp.Modelfile += "TEMPLATE \"" + chatTemplate + "\"\nPARAMETER stop <|im_end|>\n"
	}
	return resp
}

// parameterCount turns a size such as "8.0B" or "137M" into a count.
func parameterCount(size string) int64 {
	scale := map[byte]float64{'K': 1e3, 'M': 1e6, 'B': 1e9, 'T': 1e12}
	if size == "" {
		return 0
	}
	var n float64
	mult, ok := scale[size[len(size)-1]]
	if _, err := fmt.Sscanf(strings.TrimRight(size, "KMBT"), "%g", &n); err != nil || !ok {
		return 0
	}
	return int64(n * mult)
}

// handleUnmatched responds like gin with HandleMethodNotAllowed, which Ollama
// sets: 405 when the path exists for another method, with an Allow header
// that lists those methods in the order in which Ollama's router first
// registered each (HEAD, GET, POST, DELETE), and 404 otherwise.
func (s *Server) handleUnmatched(w http.ResponseWriter, r *http.Request) {
	var allowed []string
	for _, method := range []string{http.MethodHead, http.MethodGet, http.MethodPost, http.MethodDelete} {
		if method == r.Method {
			continue
		}
		if method == http.MethodHead && !servesHead(r.URL.Path) {
			// Go's mux serves HEAD wherever it serves GET.
			continue
		}
		probe := r.Clone(r.Context())
		probe.Method = method
		if _, pattern := s.mux.Handler(probe); pattern != "/" {
			allowed = append(allowed, method)
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	if len(allowed) > 0 {
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		w.WriteHeader(http.StatusMethodNotAllowed)
		io.WriteString(w, "405 method not allowed")
		return
	}
	w.WriteHeader(http.StatusNotFound)
	io.WriteString(w, "404 page not found")
}

// servesHead reports whether Ollama serves HEAD on path: on /, /api/version,
// /api/tags and /api/blobs/:digest only.
func servesHead(path string) bool {
	switch path {
	case "/", "/api/version", "/api/tags":
		return true
	}
	return strings.HasPrefix(path, "/api/blobs/")
}
