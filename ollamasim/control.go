package ollamasim

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// registerControlRoutes adds the routes that drive the simulation. They are
// not counted in Stats and no fault applies to them, except Refuse on the
// node's own listener.
func (s *Server) registerControlRoutes() {
	s.control.HandleFunc("GET /_sim/faults", s.handleGetFaults)
	s.control.HandleFunc("POST /_sim/faults", s.handleSetFaults)
	s.control.HandleFunc("DELETE /_sim/faults", s.handleClearFaults)
	s.control.HandleFunc("GET /_sim/stats", s.handleStats)
}

// ControlHandler returns a handler serving only the control routes, for a
// separate listener that stays reachable while the node refuses connections.
func (s *Server) ControlHandler() http.Handler {
	return s.control
}

func (s *Server) handleGetFaults(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, contentJSON, s.Faults())
}

// handleSetFaults replaces the faults with the body and returns them. A
// request that starts refusing connections gets its response first, because
// refusing closes the connection it came on.
func (s *Server) handleSetFaults(w http.ResponseWriter, r *http.Request) {
	var f Faults
	if err := decodeBody(r, &f); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := f.Validate(); err != nil {
		writeAPIError(w, http.StatusBadRequest, err.Error())
		return
	}
	if f.Refuse && !s.Faults().Refuse {
		// Content-Length lets the client read the whole response even
		// though the connection closes before the handler returns.
		body, _ := json.Marshal(f)
		w.Header().Set("Content-Type", contentJSON)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
		http.NewResponseController(w).Flush()
		if err := s.SetFaults(f); err != nil {
			s.cfg.Logger.Error("set faults", "error", err)
		}
		return
	}
	if err := s.SetFaults(f); err != nil {
		writeAPIError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, contentJSON, s.Faults())
}

func (s *Server) handleClearFaults(w http.ResponseWriter, r *http.Request) {
	if err := s.SetFaults(Faults{}); err != nil {
		writeAPIError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, contentJSON, s.Faults())
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, contentJSON, s.Stats())
}
