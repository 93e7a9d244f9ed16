package ollamasim

import (
	"net/http"

	"github.com/llmproxy/llmproxy/internal/ollamacheck"
)

// passChecks makes the checks that Ollama's handler for rt, and its /v1
// middleware, make before they look the model up (package ollamacheck),
// and reports whether the request may continue. They decode body with
// Ollama's request types, so that a field of the wrong type gets Go's
// message naming those types, and then check values such as top_logprobs
// and the model name. The error of a failed check goes out in the route's
// error shape, as the /v1 middleware writes its own errors or as it passes
// on those of the handler.
func (s *Server) passChecks(w http.ResponseWriter, r *http.Request, rt route, body []byte) bool {
	if s.cfg.SkipChecks {
		return true
	}
	var name string
	switch {
	case r.Method == http.MethodPost || r.Method == http.MethodDelete:
		if e, failed := ollamacheck.Precheck(rt.name, body); failed {
			writeCheckError(w, rt, e)
			return false
		}
		name = ollamacheck.RequestModel(rt.name, body)
	case rt.name == "/v1/models/{model}":
		name = r.PathValue("model")
	default:
		return true
	}
	if e, failed := ollamacheck.CheckName(rt.name, name); failed {
		writeCheckError(w, rt, e)
		return false
	}
	return true
}

func writeCheckError(w http.ResponseWriter, rt route, e ollamacheck.Error) {
	if e.Early {
		writeEarlyError(w, rt.errors, e.Status, e.Message)
		return
	}
	writeError(w, rt.errors, e.Status, e.Message)
}
