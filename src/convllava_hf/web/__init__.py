"""The `convllava-demo` web app: a Gradio chat page (gradio is imported only by `app`)."""
