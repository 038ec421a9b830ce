"""The Vicuna v1 chat template of the released ConvLLaVA models, as a string (remote code can import it)."""

VICUNA_V1_CHAT_TEMPLATE = r"""{#- Vicuna v1, the conversation format of the original ConvLLaVA (conv_templates["v1"]: sep_style TWO, sep " ",
    sep2 "</s>"): "<system> USER: <image>\n<question> ASSISTANT: <answer></s>USER: ... ASSISTANT:".
    The images of a message come first, one "<image>\n" each, then its text parts joined by spaces. Each assistant
    reply, with the space before it and its "</s>", is inside generation markers (`return_assistant_tokens_mask`). -#}
{%- set ns = namespace(system="A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.") -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set ns.system = messages[0]['content'] -%}
    {%- else -%}
        {%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}
    {%- endif -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{{- ns.system + ' ' -}}
{%- for message in messages -%}
    {%- if message['role'] not in ['user', 'assistant'] -%}
        {{- raise_exception("Roles after an optional first system message must be 'user' or 'assistant', got '" + message['role'] + "'.") -}}
    {%- endif -%}
    {%- set ns.text = '' -%}
    {%- if message['content'] is string -%}
        {%- set ns.text = message['content'] -%}
    {%- elif message['content'] is defined -%}
        {%- for item in message['content'] | selectattr('type', 'equalto', 'image') -%}
            {%- set ns.text = ns.text + '<image>\n' -%}
        {%- endfor -%}
        {%- set ns.text = ns.text + (message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')) -%}
    {%- endif -%}
    {%- set role = 'USER' if message['role'] == 'user' else 'ASSISTANT' -%}
    {%- if not ns.text -%}
        {{- role + ':' -}}
    {%- elif message['role'] == 'user' -%}
        {{- role + ': ' + ns.text + ' ' -}}
    {%- else -%}
        {{- role + ':' -}}
        {%- generation -%}
            {{- ' ' + ns.text + '</s>' -}}
        {%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""
