"""Registers the CPC-SAM Segment Editor effect (point prompts with a trained CPC-SAM model)."""

import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class SegmentEditorCPCSAM(ScriptedLoadableModule):
    """Hidden module whose only job is to register the effect when Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorCPCSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "CPCSAM"]  # CPCSAM makes CPCSAMLib importable
        self.parent.contributors = ["CPC-SAM for 3D Slicer contributors"]
        self.parent.hidden = True
        self.parent.helpText = """
Segment Editor effect <b>CPC-SAM</b>: click on a slice view to segment the selected segment with a
model trained by the CPC-SAM module (left click: foreground point; Shift+left click: background
point), optionally propagated to the neighbouring slices.
"""
        self.parent.acknowledgementText = """
Method: Miao J, Chen C, Zhang K, Chuai J, Li Q, Heng PA. Cross Prompting Consistency with Segment
Anything Model for Semi-supervised Medical Image Segmentation. MICCAI 2024.
"""
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib",
                                      "SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


class SegmentEditorCPCSAMTest(ScriptedLoadableModuleTest):
    """Checks that the effect is registered and can be activated in a Segment Editor."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_effect_is_registered()

    def test_effect_is_registered(self):
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((3, 32, 32), np.uint8), name="CPCSAMEffectTest")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.GetSegmentation().AddEmptySegment("lesion")
        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editor.setMRMLSegmentEditorNode(editorNode)
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume) if hasattr(editor, "setSourceVolumeNode") else editor.setMasterVolumeNode(volume)
        editor.setActiveEffectByName("CPC-SAM")
        effect = editor.activeEffect()
        self.assertIsNotNone(effect)
        self.assertEqual(effect.name, "CPC-SAM")
        editor.setActiveEffect(None)
        self.delayDisplay("Test passed")
