//! Python view of the wire codec (`fnmesh_core::protocol`), for tests and tools: decode a frame,
//! look at its kind, re-encode it canonically, or see it as Python objects.

use fnmesh_core::protocol::{self, Message};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::errors::IntoPyResult;

/// One decoded protocol message.
#[pyclass(frozen, module = "fnmesh._native", name = "Frame")]
pub struct Frame {
    message: Message,
}

/// Borrows the bytes of a `bytes`, `bytearray`-free input or the UTF-8 of a `str`.
fn frame_bytes<'a>(data: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    if let Ok(s) = data.cast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "a frame is bytes or str, not {}",
        data.get_type().name()?
    )))
}

#[pymethods]
impl Frame {
    /// Decodes one frame (bytes or str). Raises `MalformedFrame`, or `FrameTooLarge` when
    /// `max_size` is given and exceeded.
    #[staticmethod]
    #[pyo3(signature = (data, max_size = None))]
    fn decode(data: &Bound<'_, PyAny>, max_size: Option<usize>) -> PyResult<Frame> {
        let bytes = frame_bytes(data)?;
        let message = match max_size {
            Some(limit) => protocol::decode_limited(bytes, limit),
            None => protocol::decode(bytes),
        }
        .into_py_result()?;
        Ok(Frame { message })
    }

    /// Builds a frame from a dict shaped like the wire message (validated by decoding it).
    #[staticmethod]
    fn from_dict(py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<Frame> {
        let json = py.import("json")?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("ensure_ascii", false)?;
        kwargs.set_item("separators", (",", ":"))?;
        let text = json.call_method("dumps", (message,), Some(&kwargs))?;
        Frame::decode(&text, None)
    }

    /// The message's `type`.
    #[getter]
    fn kind(&self) -> &str {
        self.message.kind()
    }

    /// False when the `type` is not one the codec knows (the frame is then kept whole).
    #[getter]
    fn known(&self) -> bool {
        self.message.is_known()
    }

    /// The canonical wire text: compact UTF-8 JSON, `type` first, absent fields omitted.
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.message.encode())
    }

    /// The message as Python objects (payloads parsed with `json.loads`).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.message.to_text(),))
    }

    fn __repr__(&self) -> String {
        let text = self.message.to_text();
        let shown: String = text.chars().take(200).collect();
        let more = if shown.len() < text.len() { "..." } else { "" };
        format!("Frame({shown}{more})")
    }
}

/// Default frame size limit in bytes (64 MiB).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Frame>()?;
    m.add("DEFAULT_MAX_FRAME_BYTES", protocol::DEFAULT_MAX_FRAME_BYTES)?;
    Ok(())
}
