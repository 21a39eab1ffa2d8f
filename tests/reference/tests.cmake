# PyTorch reference tests (CONVENTIONS.md item 5). Included from tests/CMakeLists.txt, so
# CMAKE_CURRENT_SOURCE_DIR is <repo>/tests. They use Debian's Python (/usr/bin/python3 with the
# python3-torch and python3-numpy packages), never a pyenv/virtualenv one.
set(MIXATTN_REFERENCE_PYTHON /usr/bin/python3)

# The preset rule reimplemented in Python must reproduce shared/PRESETS.md (no torch needed).
add_test(NAME reference_presets
  COMMAND ${MIXATTN_REFERENCE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/reference/presets_ref.py
          --presets-md ${PROJECT_SOURCE_DIR}/../shared/PRESETS.md)

# The PyTorch model checked on its own: spec properties and negative controls.
add_test(NAME reference_model_selftest
  COMMAND ${MIXATTN_REFERENCE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/reference/test_parity.py
          --selftest)

# End to end: `mixattn init` models, C++ reference forward (dump_logits) vs the PyTorch forward.
if(TARGET dump_logits)
  add_test(NAME reference_parity
    COMMAND ${MIXATTN_REFERENCE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/reference/test_parity.py
            --mixattn $<TARGET_FILE:mixattn> --dump-logits $<TARGET_FILE:dump_logits>
            --workdir ${CMAKE_CURRENT_BINARY_DIR}/parity)
  set_tests_properties(reference_parity PROPERTIES TIMEOUT 300)
endif()

set_tests_properties(reference_presets reference_model_selftest PROPERTIES TIMEOUT 120)

# Training: C++ loss, gradients and 3 AdamW steps (train_steps) vs PyTorch autograd + AdamW.
if(TARGET train_steps)
  add_test(NAME reference_train_parity
    COMMAND ${MIXATTN_REFERENCE_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/reference/test_train_parity.py
            --mixattn $<TARGET_FILE:mixattn> --train-steps $<TARGET_FILE:train_steps>
            --workdir ${CMAKE_CURRENT_BINARY_DIR}/train_parity)
  set_tests_properties(reference_train_parity PROPERTIES TIMEOUT 600)
endif()
